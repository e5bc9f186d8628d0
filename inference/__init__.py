"""The inference core: open a model version, choose its encoder, encode prompts, apply the candidate prior
and rank with FAISS. One piece of code for the service, ``edgerec export``'s check and offline evaluation.

- ``inference.version``: ``open_version(folder)`` -> ``InferenceVersion`` (``encode``, ``search``, ``rank``)
- ``inference.encoders``: the ``Encoder`` interface, ``OnnxEncoder`` and ``open_encoder`` (the one rule)
- ``inference.ranker``: ``Ranker`` (exact top-k with exclusions and boosts) and ``candidate_boosts``
- ``inference.torch_model`` / ``inference.torch_encoder``: the GPT-2 network and its torch encoder, imported
  only when torch is asked for (training imports the network from here)
"""

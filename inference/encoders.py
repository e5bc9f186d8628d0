"""Prompt encoders behind one small interface: prompt tensors in, user vectors out.

A model version (docs/ARCHITECTURE.md) carries the GPT-2 body twice: ``encoder.onnx`` (served with ONNX
Runtime, no torch needed) and ``encoder.safetensors`` + ``model_config.json`` (the torch encoder, in
``inference.torch_encoder``). Both take the output of ``PromptBuilder.collate``::

    input_ids       int64   [B, L]
    attention_mask  int64   [B, L]   1 for real tokens, 0 for padding
    graph_bias      float32 [B, L, L]

and return ``user_vector`` float32 ``[B, D]``; ``scores = item_embeddings @ user_vector``. A model with the
candidate prior has a second output, ``candidate_scores`` float32 ``[B, L]``: a non-negative score per prompt
position, added to the score of the item that position names (``inference.ranker``).

:func:`open_encoder` is the one rule for choosing between them. This module never imports torch; the torch
encoder is imported only when chosen. The idea of one interface with run-time-chosen implementations follows
benfred/implicit's recommender base.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

ONNX_FILE = "encoder.onnx"
ONNX_INT8_FILE = "encoder.int8.onnx"
TORCH_WEIGHTS_FILE = "encoder.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
INPUT_NAMES = ("input_ids", "attention_mask", "graph_bias")
OUTPUT_NAME = "user_vector"
CANDIDATE_OUTPUT_NAME = "candidate_scores"


@runtime_checkable
class Encoder(Protocol):
    """What the service and the offline evaluation need from an encoder."""

    @property
    def dim(self) -> int: ...

    @property
    def providers(self) -> list[str]: ...

    @property
    def has_candidates(self) -> bool: ...

    def encode(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, graph_bias: np.ndarray
    ) -> np.ndarray: ...

    def encode_full(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, graph_bias: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]: ...


def check_inputs(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    graph_bias: np.ndarray,
    vocab_size: int | None = None,
    max_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes and cast to the exported dtypes (int64, int64, float32), contiguous.

    Errors name the offending input, so a caller that mixes up the collate output sees what went wrong
    instead of an opaque ONNX Runtime shape error.
    """
    ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
    bias = np.ascontiguousarray(graph_bias, dtype=np.float32)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    b, length = ids.shape
    if b == 0 or length == 0:
        raise ValueError(f"input_ids is empty (shape {ids.shape}); encode at least one token of one prompt")
    if mask.shape != (b, length):
        raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids {ids.shape}")
    if bias.shape != (b, length, length):
        raise ValueError(
            f"graph_bias shape {bias.shape} does not match input_ids; expected {(b, length, length)}"
        )
    if max_length is not None and length > max_length:
        raise ValueError(f"prompts of {length} tokens exceed the model's {max_length} positions")
    if ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size):
        raise ValueError(f"input_ids outside the vocabulary [0, {vocab_size})")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    if (mask.sum(axis=1) == 0).any():
        raise ValueError("a prompt in the batch has no real token (attention_mask row is all 0)")
    if not np.isfinite(bias).all():
        raise ValueError("graph_bias must be finite (masking is done inside the encoder)")
    return ids, mask, bias


def default_providers() -> list[str]:
    """ONNX Runtime providers: CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*wanted, "CPUExecutionProvider"]


class OnnxEncoder:
    """ONNX Runtime session over ``encoder.onnx`` (or the INT8 ``encoder.int8.onnx``)."""

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX encoder at {self.path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = intra_op_threads if intra_op_threads is not None else _env_threads()
        if threads:
            opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(self.path), sess_options=opts, providers=providers or default_providers()
        )
        names = [i.name for i in self._session.get_inputs()]
        if sorted(names) != sorted(INPUT_NAMES):
            raise ValueError(f"{self.path}: inputs {names} are not the encoder contract {list(INPUT_NAMES)}")
        outs = self._session.get_outputs()
        out = outs[0]
        if out.name != OUTPUT_NAME or not isinstance(out.shape[-1], int):
            raise ValueError(f"{self.path}: output {out.name} {out.shape} is not {OUTPUT_NAME} [B, D]")
        extra = [o.name for o in outs[1:]]
        if extra not in ([], [CANDIDATE_OUTPUT_NAME]):
            raise ValueError(
                f"{self.path}: unexpected outputs {extra} (only {CANDIDATE_OUTPUT_NAME} may follow)"
            )
        self._outputs = [OUTPUT_NAME, *extra]
        self._dim = int(out.shape[-1])
        meta = self._session.get_modelmeta().custom_metadata_map
        # Limits stamped by the exporter: the model clamps out-of-range ids, so they must be refused here.
        self.vocab_size = int(meta["edgerec.vocab_size"]) if "edgerec.vocab_size" in meta else None
        self.max_length = int(meta["edgerec.max_length"]) if "edgerec.max_length" in meta else None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    @property
    def has_candidates(self) -> bool:
        return len(self._outputs) > 1

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray, graph_bias: np.ndarray) -> np.ndarray:
        return self.encode_full(input_ids, attention_mask, graph_bias)[0]

    def encode_full(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, graph_bias: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(user vectors [B, D], candidate scores [B, L] or None when the model has no candidate prior)."""
        ids, mask, bias = check_inputs(
            input_ids, attention_mask, graph_bias, self.vocab_size, self.max_length
        )
        feed = {"input_ids": ids, "attention_mask": mask, "graph_bias": bias}
        res = self._session.run(self._outputs, feed)
        return res[0], (res[1] if len(res) > 1 else None)

    def __repr__(self) -> str:
        return f"OnnxEncoder({self.path.name}, dim={self.dim}, providers={self.providers})"


def _env_threads() -> int | None:
    """Honour OMP_NUM_THREADS for ONNX Runtime too, so one knob bounds CPU use of torch and ORT alike."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def open_encoder(
    version_dir: str | Path,
    prefer: str = "auto",
    *,
    int8: bool = False,
    use_gpu: str = "auto",
    threads: int | None = None,
    providers: list[str] | None = None,
) -> Encoder:
    """The encoder of a model version folder: the one rule every caller (service, export, evaluation) uses.

    ``prefer="auto"`` takes ``encoder.onnx`` (``encoder.int8.onnx`` with ``int8``) and falls back to the
    torch weights only when the version has no ONNX file; ``"onnx"`` refuses that fallback; ``"torch"``
    always uses the torch weights. ``use_gpu``: ``"auto"`` (CUDA when this onnxruntime/torch has it),
    ``"yes"`` or ``"no"`` (CPU only). ``threads`` bounds intra-op threads (default: OMP_NUM_THREADS).
    torch is imported only when the torch encoder is chosen.
    """
    folder = Path(version_dir)
    if prefer not in ("auto", "onnx", "torch"):
        raise ValueError(f"encoder must be 'auto', 'onnx' or 'torch', got {prefer!r}")
    if use_gpu not in ("auto", "yes", "no"):
        raise ValueError(f"use_gpu must be 'auto', 'yes' or 'no', got {use_gpu!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"model version folder {folder} does not exist")
    onnx_path = folder / (ONNX_INT8_FILE if int8 else ONNX_FILE)
    if int8 and not onnx_path.is_file():
        raise FileNotFoundError(f"{folder} has no INT8 encoder ({ONNX_INT8_FILE}); export with --int8")
    if prefer != "torch" and onnx_path.is_file():
        if providers is None:
            providers = ["CPUExecutionProvider"] if use_gpu == "no" else default_providers()
        return OnnxEncoder(onnx_path, providers=providers, intra_op_threads=threads)
    if prefer == "onnx":
        raise FileNotFoundError(f"{folder} has no {onnx_path.name} and the ONNX encoder was required")
    missing = [n for n in (TORCH_WEIGHTS_FILE, MODEL_CONFIG_FILE) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} holds no encoder ({ONNX_FILE}, or {' + '.join(missing)})")
    from inference.torch_encoder import TorchEncoder  # torch only when asked for

    return TorchEncoder(folder, device=None if use_gpu != "no" else "cpu", threads=threads)

"""Offline evaluation of a model version the way it serves: the inference core's prompts-to-ranking path
(``inference.version``: its encoder, ONNX by default, its candidate prior and its FAISS index).

Prompts are the ones training scored with (``PredictiveData.eval_prompts``: all train items in the run
seed's fixed per-user order, the version's train graph); the core returns each user's top-100 among items not
yet known, and ``training.evaluation.harness.evaluate`` computes the metrics from those 100 scores, so the
numbers are comparable with the run's own metrics.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from inference.encoders import Encoder
from inference.version import EXPORT_INFO_FILE, InferenceVersion, open_version
from training.evaluation.harness import DEFAULT_KS, DEFAULT_NDCG_KS, evaluate, known_items

HISTORY_ORDERS = ("training", "stored")


def evaluate_version(
    version_dir: str | os.PathLike[str],
    dataset,
    split: str = "test",
    *,
    seed: int | None = None,
    encoder: Encoder | None = None,
    batch_size: int = 256,
    users: np.ndarray | None = None,
    history_order: str = "training",
    mask_valid_on_test: bool = False,
) -> dict[str, float]:
    """Metrics of the version folder on ``split`` of ``dataset`` (which must be the one it was exported from).

    ``history_order="stored"`` builds the prompt the way the service does for a known user without live
    history (train items oldest first where the graph kept the time order, else by index; not the run
    seed's shuffle): the difference between
    the two is the train/serve skew due to history order alone. ``mask_valid_on_test`` is the harness's
    option of the same name. ``encoder`` replaces the version's own (e.g. the INT8 or the torch encoder)."""
    from training.recipe.finetune import PredictiveData  # the evaluation prompts are training's own

    if history_order not in HISTORY_ORDERS:
        raise ValueError(f"history_order must be one of {HISTORY_ORDERS}, got {history_order!r}")
    folder = Path(version_dir)
    info = json.loads((folder / EXPORT_INFO_FILE).read_text())
    if info["dataset_fingerprint"] != dataset.fingerprint:
        raise ValueError(f"{folder} was exported from another dataset than {dataset.name}")
    version = open_version(folder, encoder=encoder)
    builder, graph = version.builder, version.graph
    pdata = PredictiveData(builder, graph, info["seed"] if seed is None else seed, target_variants=1)
    known = known_items(dataset, split, mask_valid_on_test)
    k = min(max(*DEFAULT_KS, *DEFAULT_NDCG_KS), dataset.n_items)

    def prompts(batch_users: np.ndarray) -> list:
        if history_order == "training":
            return pdata.eval_prompts(batch_users)
        out = []
        for u in batch_users:
            items = graph.user_items_in_time(int(u))  # as the service lists them
            out.append(builder.predictive(int(u), items, builder.neighbourhood(int(u), items)))
        return out

    def score(batch_users: np.ndarray) -> np.ndarray:
        hist = [graph.user_items_in_time(int(u)) for u in batch_users]  # newest last (transitions)
        excl = [known.indices[known.indptr[u] : known.indptr[u + 1]] for u in batch_users]
        ids, scores = version.rank(prompts(batch_users), hist, excl, k)
        return _dense(version, ids, scores)

    return evaluate(
        score, dataset, split, batch_size=batch_size, users=users, mask_valid_on_test=mask_valid_on_test
    )


def _dense(version: InferenceVersion, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The harness takes a score per item: the ranked top-k, -inf elsewhere."""
    out = np.full((len(ids), version.n_items), -np.inf, dtype=np.float32)
    rows, cols = np.nonzero(ids >= 0)
    out[rows, ids[rows, cols]] = scores[rows, cols]
    return out

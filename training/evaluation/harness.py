"""The one evaluation harness: baselines and the GPT-2 model are scored by this same code.

Protocol (DESIGN.md §1, arXiv 2402.09617): full ranking over all items, models score from the train
matrix, and the **train** items are masked to -inf before ranking, for both ``split="valid"`` and
``split="test"``. Validation items are *not* masked at test time: they stay rankable (and occupy slots
when a model ranks them high). That is the paper's protocol and the one the reference numbers in
``../shared/datasets/README.md`` follow: on movielens-100k (about 5 validation items per user, where the
choice matters) masking them too lifts EASE's test R@20 from .384 to .402 against the reference .381
(``python -m benchmarks.baselines_bench protocol movielens-100k``; docs/benchmarks.md, "Baselines").
``mask_valid_on_test=True`` gives the other protocol where wanted; it is not what tables report.

Only users with at least one held-out item in the split are scored, and the metrics are averaged over them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from training.evaluation.metrics import MetricAccumulator, batch_metrics, metric_names

ScoreFn = Callable[[np.ndarray], Any]  # user indices [B] -> scores [B, I] (numpy or torch)

DEFAULT_KS = (20, 40)
DEFAULT_NDCG_KS = (100,)


def known_items(dataset, split: str, mask_valid_on_test: bool = False) -> sp.csr_matrix:
    """The interactions masked when evaluating ``split``: train (plus valid for test when asked)."""
    if split not in ("valid", "test"):
        raise ValueError(f"unknown split {split!r}; use 'valid' or 'test'")
    if split == "test" and mask_valid_on_test:
        return (dataset.train + dataset.valid).tocsr()
    return dataset.train.tocsr()


def evaluate(
    score_fn: ScoreFn,
    dataset,
    split: str = "valid",
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
    batch_size: int = 1024,
    users: np.ndarray | None = None,
    mask_valid_on_test: bool = False,
    per_user: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Score ``dataset``'s held-out ``split`` with ``score_fn``.

    ``dataset`` is anything with CSR ``train``, ``valid``, ``test`` attributes (a ``PreparedDataset``).
    ``users`` restricts evaluation to a subset (e.g. a quick check); by default every user with held-out
    items. Returns ``{"recall@20": ..., "recall@40": ..., "ndcg@100": ..., "users": n}``. ``per_user``, when
    given, is filled with each metric's per-user values and ``"user"`` (the users in that order): two models
    scored on one split can then be compared user by user (the retrain gate's paired test).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    mask = known_items(dataset, split, mask_valid_on_test)
    heldout = getattr(dataset, split).tocsr()
    n_items = heldout.shape[1]
    users = scored_users(heldout, users)
    acc = MetricAccumulator(metric_names(ks, ndcg_ks))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = to_numpy(score_fn(batch))
        if scores.shape != (len(batch), n_items):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected {(len(batch), n_items)}")
        found = batch_metrics(scores, heldout[batch], ks, ndcg_ks, exclude=mask[batch])
        acc.add(found)
        if per_user is not None:
            parts.append({"user": batch, **found})
    if per_user is not None and parts:
        per_user.update({k: np.concatenate([b[k] for b in parts]) for k in parts[0]})
    return acc.result()


def scored_users(heldout: sp.csr_matrix, users: np.ndarray | None = None) -> np.ndarray:
    """The users a split scores: ``users`` (all by default) that have at least one held-out item."""
    n_users = heldout.shape[0]
    has_heldout = np.diff(heldout.indptr) > 0
    if users is None:
        return np.flatnonzero(has_heldout)
    users = np.asarray(users, dtype=np.int64)
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user indices must lie in [0, {n_users})")
    return users[has_heldout[users]]


def to_numpy(scores: Any) -> np.ndarray:
    """Accept numpy arrays or torch tensors (without importing torch here); always return a writable float
    array."""
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    arr = np.asarray(scores)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return np.array(arr, copy=True) if not arr.flags.writeable else arr

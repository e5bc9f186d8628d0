"""Many rankers that differ only in weighted, non-negative, sparse boosts, scored in one pass.

The blend grid (``training/recipe/blend.py``) scores about a hundred points ``base + Σ wₚ · boostₚ`` on
the same validation users. Scoring each point with :func:`training.evaluation.harness.evaluate` repeats
the base scores' matrix product and a top-k over every item per point; on amazon-sports (18,357 items,
~35k users, 112 points) that was about 24 of the 40 minutes after training (docs/benchmarks.md). Here
the base scores are computed and masked once per batch, and each point ranks only a few hundred candidate
items per user.

Why that is exact: a boost is ``≥ 0`` and only touches the items it lists. An item that is not in the
base scores' top k and that no part boosts keeps its base score at every point, while each of the k items
ranked above it in the base order keeps a score at least as high, and ties break by smaller item index in
both orders (``training.evaluation.metrics.topk_items``). So every point's top k lies in the union of the
base top k and the boosted items, and ranking that union, held in item order, gives the same top k, hence
the same metrics, bit for bit (``tests/test_boost_grid.py`` checks it against ``evaluate`` per point). A
batch with a negative boost falls back to ranking every item.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from inference.ranker import Boost
from training.evaluation.harness import (
    DEFAULT_KS,
    DEFAULT_NDCG_KS,
    ScoreFn,
    known_items,
    scored_users,
    to_numpy,
)
from training.evaluation.metrics import (
    MetricAccumulator,
    hit_metrics,
    mask_items,
    metric_names,
    topk_items,
)

BoostFn = Callable[[np.ndarray], Mapping[str, Sequence[Boost | None]]]  # users [B] -> part -> per-user boost
Point = Mapping[str, float]  # part name -> weight; parts are added in this order


def add_boosts(scores: np.ndarray, rows: Sequence[Boost | None], weight: float) -> None:
    """scores[r, items] += weight · boosts, in place (a no-op at weight 0)."""
    if weight == 0.0:
        return
    for r, b in enumerate(rows):
        if b is not None and len(b[0]):
            np.add.at(scores[r], b[0], weight * b[1])


def evaluate_boost_grid(
    base_fn: ScoreFn,
    boost_fn: BoostFn,
    points: Sequence[Point],
    dataset,
    split: str = "valid",
    users: np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
    batch_size: int = 1024,
) -> list[dict[str, float]]:
    """For each point, what ``evaluate`` gives for the scores ``base_fn(users)`` plus each named part of
    ``boost_fn(users)`` times the point's weight for it (same users, batches, masking and metrics)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    mask = known_items(dataset, split)
    heldout = getattr(dataset, split).tocsr()
    n_items = heldout.shape[1]
    users = scored_users(heldout, users)
    k = min(max([*ks, *ndcg_ks]), n_items)
    names = metric_names(ks, ndcg_ks)
    accs = [MetricAccumulator(names) for _ in points]
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        base = to_numpy(base_fn(batch))
        if base.shape != (len(batch), n_items):
            raise ValueError(f"base_fn returned shape {base.shape}, expected {(len(batch), n_items)}")
        mask_items(base, mask[batch])  # -inf + a boost stays -inf: masking first is masking last
        boosts = boost_fn(batch)
        cand = _candidates(base, k, boosts)
        # padding columns (item index n_items) score -inf, are never held out, and rank after every real item
        pad = cand == n_items
        real = np.where(pad, 0, cand)
        base_c = np.take_along_axis(base, real, axis=1)
        base_c[pad] = -np.inf
        part = heldout[batch]
        held = np.zeros((len(batch), n_items), dtype=bool)
        held[np.repeat(np.arange(len(batch)), np.diff(part.indptr)), part.indices] = True
        held_c = np.take_along_axis(held, real, axis=1) & ~pad
        n_heldout = np.diff(part.indptr)
        cols = {name: _to_columns(cand, found) for name, found in boosts.items()}
        for acc, point in zip(accs, points, strict=True):
            scores = base_c.copy()
            for name, weight in point.items():
                add_boosts(scores, cols[name], weight)
            hits = np.take_along_axis(held_c, topk_items(scores, k), axis=1)
            acc.add(hit_metrics(hits, n_heldout, ks, ndcg_ks))
    return [acc.result() for acc in accs]


def _candidates(base: np.ndarray, k: int, boosts: Mapping[str, Sequence[Boost | None]]) -> np.ndarray:
    """``[B, C]`` item indices per row, ascending (so column order is item order, as the tie-break needs):
    the base top k and every boosted item, padded with ``n_items``."""
    n_rows, n_items = base.shape
    every = [b for found in boosts.values() for b in found if b is not None and len(b[0])]
    if any((b[1] < 0).any() for b in every):
        return np.tile(np.arange(n_items), (n_rows, 1))
    top = topk_items(base, k)
    per_row = [[top[r]] for r in range(n_rows)]
    for found in boosts.values():
        for r, b in enumerate(found):
            if b is not None and len(b[0]):
                per_row[r].append(np.asarray(b[0], dtype=np.int64))
    sets = [np.unique(np.concatenate(parts)) for parts in per_row]
    out = np.full((n_rows, max(len(s) for s in sets)), n_items, dtype=np.int64)
    for r, s in enumerate(sets):
        out[r, : len(s)] = s
    return out


def _to_columns(cand: np.ndarray, found: Sequence[Boost | None]) -> list[Boost | None]:
    """Each row's boost with its items replaced by their columns in ``cand`` (every boosted item is one)."""
    out: list[Boost | None] = []
    for r, b in enumerate(found):
        out.append(None if b is None or not len(b[0]) else (np.searchsorted(cand[r], b[0]), b[1]))
    return out

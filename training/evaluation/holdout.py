"""Score model versions on a retrain snapshot's holdout, all with one protocol: the promotion gate.

The snapshot (``training.data.snapshot``) keeps the served version's users and items at their dense ids and
appends the new ones, so every version's ids are a prefix of the snapshot's. Each holdout user is ranked the
way the service ranks them (``inference.version``: encoder, candidate prior, FAISS): the user's token when
the version knows the user, the history = the user's snapshot train items the version knows (stored order),
the neighbourhood from the version's own graph, those items excluded. An item the version does not know
cannot be recommended by it (a miss), and a user with no known item gets no ranking (a miss): that is what
serving them would give. Metrics come from ``training.evaluation.harness.evaluate`` on the snapshot's
``test`` split (the holdout), so served and candidate numbers are directly comparable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from inference.version import open_version
from training.evaluation.harness import DEFAULT_KS, DEFAULT_NDCG_KS, evaluate


def score_holdout(
    version_dir: str | os.PathLike[str],
    snapshot,
    batch_size: int = 128,
    per_user: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Metrics of the version folder on ``snapshot``'s holdout (its ``test`` split); ``per_user`` as
    :func:`training.evaluation.harness.evaluate` fills it."""
    version = open_version(Path(version_dir))
    n_u, n_i = len(version.user_ids), len(version.item_ids)
    if version.user_ids != snapshot.user_ids[:n_u] or version.item_ids != snapshot.item_ids[:n_i]:
        raise ValueError(f"{version_dir}: its user/item ids are not a prefix of the snapshot's")
    builder = version.builder
    train = snapshot.train.tocsr()
    k = min(max(*DEFAULT_KS, *DEFAULT_NDCG_KS), n_i)

    def score(users: np.ndarray) -> np.ndarray:
        out = np.full((len(users), snapshot.n_items), -np.inf, dtype=np.float32)
        prompts, hists, rows = [], [], []
        for r, u in enumerate(users):
            items = train.indices[train.indptr[u] : train.indptr[u + 1]]
            hist = np.asarray(items[items < n_i], dtype=np.int64)
            if not hist.size:
                continue
            user = int(u) if u < n_u else None
            prompts.append(builder.predictive(user, hist, builder.neighbourhood(user, hist)))
            hists.append(hist)
            rows.append(r)
        if prompts:
            ids, scores = version.rank(prompts, hists, hists, k)
            for r, i, s in zip(rows, ids, scores, strict=True):
                ok = i >= 0
                out[r, i[ok]] = s[ok]
        return out

    return evaluate(score, snapshot, "test", batch_size=batch_size, per_user=per_user)

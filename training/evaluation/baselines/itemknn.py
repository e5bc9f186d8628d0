"""Item-based k-nearest neighbours with cosine similarity (Sarwar et al. 2001; Deshpande & Karypis 2004).

``sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrink)`` over train users; for every target item ``j``
only its ``k`` most similar items are kept; ``score(u, j) = sum_{i in train(u)} sim(i, j)``. The similarity
matrix stays sparse (``I x k`` non-zeros), so this scales to the larger Amazon sets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from training.evaluation.baselines.base import Recommender


class ItemKNN(Recommender):
    name = "ItemKNN"
    grid = {"k": [20, 50, 100, 200, 500], "shrink": [0.0, 10.0, 50.0]}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"k": 100, "shrink": 0.0}

    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None, log=None) -> ItemKNN:
        k, shrink = int(self.params["k"]), float(self.params["shrink"])
        if k < 1 or shrink < 0:
            raise ValueError(f"ItemKNN: need k >= 1 and shrink >= 0, got k={k}, shrink={shrink}")
        self.train = x = self._check_train(train)
        xc = x.tocsc()
        co = (xc.T @ xc).tocsc()  # items x items co-occurrence counts
        co.setdiag(0)
        co.eliminate_zeros()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        # cosine with shrinkage on every stored pair: column j holds sim(., j)
        rows = co.indices
        cols = np.repeat(np.arange(co.shape[1]), np.diff(co.indptr))
        co.data = co.data / (norms[rows] * norms[cols] + shrink + 1e-12)
        self.sim = _top_k_per_column(co, k).tocsr().astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        x = self._require_fit()
        return np.asarray((x[users] @ self.sim).toarray(), dtype=np.float32)


def _top_k_per_column(m: sp.csc_matrix, k: int) -> sp.csc_matrix:
    """Keep the k largest entries of every column (ties: smaller row index first, for determinism)."""
    indptr, indices, data = m.indptr, m.indices, m.data
    keep = np.ones(len(data), dtype=bool)
    for j in np.flatnonzero(np.diff(indptr) > k):
        lo, hi = indptr[j], indptr[j + 1]
        # lexsort: last key is primary -> by value descending, then row index ascending
        order = np.lexsort((indices[lo:hi], -data[lo:hi]))
        keep[lo + order[k:]] = False
    counts = np.add.reduceat(keep, indptr[:-1]) if len(data) else np.zeros(m.shape[1], dtype=np.int64)
    counts = np.where(np.diff(indptr) > 0, counts, 0)
    new_indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csc_matrix((data[keep], indices[keep], new_indptr), shape=m.shape)


class ItemKNNNoShrink(ItemKNN):
    """Plain cosine (no shrinkage), the variant behind the reference numbers in the datasets README."""

    name = "ItemKNN (no shrink)"
    grid = {"k": [20, 50, 100, 200, 500], "shrink": [0.0]}

"""EASE^R (Steck, WWW 2019): a closed-form item-item linear autoencoder with a zero diagonal.

``G = XᵀX + λI``, ``P = G⁻¹``, ``B = -P / diag(P)`` column-wise with ``diag(B) = 0``; ``score = X B``. The
inverse comes from a Cholesky factorisation (LAPACK ``potrf``/``potri``, ~n³ flops instead of LU's ~2n³).
float64 below ``float32_above`` items; above it float32 halves memory and time (12k items: 0.6 GB per
matrix) and is accurate enough here because ``λI`` keeps ``G`` well conditioned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg.lapack as lapack
import scipy.sparse as sp

from training.evaluation.baselines.base import Recommender


class EASE(Recommender):
    name = "EASE"
    grid = {"lam": [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"lam": 200.0, "float32_above": 5000}

    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None, log=None) -> EASE:
        lam = float(self.params["lam"])
        if lam <= 0:
            raise ValueError(f"EASE: lam must be positive, got {lam}")
        self.train = x = self._check_train(train)
        n = x.shape[1]
        dtype = np.float32 if n > int(self.params["float32_above"]) else np.float64
        gram = (x.T @ x).toarray().astype(dtype)
        gram[np.diag_indices(n)] += lam
        p = _spd_inverse(gram)  # overwrites gram
        p /= -np.diag(p)[None, :]
        p[np.diag_indices(n)] = 0.0
        self.weights = p.astype(np.float32, copy=False)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        x = self._require_fit()
        return np.asarray(x[users] @ self.weights, dtype=np.float32)


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite matrix via Cholesky; returns the full symmetric matrix."""
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    # a is symmetric, so its transpose is the same matrix in Fortran order: LAPACK then works in place, no
    # copy
    c, info = potrf(a.T, lower=False, overwrite_a=True, clean=True)
    if info != 0:
        raise np.linalg.LinAlgError(
            f"EASE: Gram matrix is not positive definite (potrf info={info}); raise lam"
        )
    inv, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inversion failed (potri info={info})")
    # potri fills only the upper triangle; mirror it
    inv = np.triu(inv)
    inv += np.triu(inv, 1).T
    return inv

"""Popularity: every user gets the items ranked by their number of train interactions."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.evaluation.baselines.base import Recommender


class Pop(Recommender):
    name = "Pop"

    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None, log=None) -> Pop:
        self.train = self._check_train(train)
        self.counts = np.asarray(self.train.sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        self._require_fit()
        return np.tile(self.counts, (len(users), 1))

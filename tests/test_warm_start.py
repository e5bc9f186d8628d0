"""Warm-start rows (``training.recipe.warm_start.warm_rows``): what a retrain gives new users and items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.recipe.warm_start import warm_rows


def test_known_rows_kept_new_rows_from_their_neighbours():
    # 3 known users x 3 known items, then user 3 and items 3, 4 are new
    pairs = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (3, 0), (3, 3), (1, 3)]
    u, i = zip(*pairs, strict=True)
    train = sp.csr_matrix((np.full(len(u), 2.0, np.float32), (u, i)), shape=(4, 5))
    users = np.array([[1.0, 0], [0, 1], [2, 2]], np.float32)
    items = np.array([[1.0, 1], [3, 0], [0, 6]], np.float32)
    nu, ni = warm_rows(train, users, items, 4, 5)
    assert np.array_equal(nu[:3], users) and np.array_equal(ni[:3], items)
    # user 3 shares item 0 with user 0 and item 3 with user 1
    assert np.allclose(nu[3], users[[0, 1]].mean(0))
    # item 3's users (1 and 3) chose known items 0, 1, 2 (user 1: 1, 2; user 3: 0)
    assert np.allclose(ni[3], items[[0, 1, 2]].mean(0))
    # item 4 has no interactions: the mean of all known items
    assert np.allclose(ni[4], items.mean(0))
    assert (train.data == 2.0).all(), "warm_rows wrote into the caller's matrix"

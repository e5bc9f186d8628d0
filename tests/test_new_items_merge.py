"""The side index of new catalogue items: merged with the FAISS top-k, the answer is the exact top-k of all
items (known + new) outside each user's exclusions, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from inference.ranker import Ranker
from inference.side_index import SideIndex
from model_store.index import build_index

N_ITEMS, N_NEW, DIM = 300, 40, 16


def brute_force(q, emb, side, k, excl_known, excl_new, boosts=None, bonus=None):
    """Every item scored, exclusions at -inf, stable sort (known items before new ones on ties)."""
    side_scores = (q @ side.T).astype(np.float32)
    for r in range(len(q)):
        side_scores[r, excl_new[r]] = -np.inf
        if bonus is not None:  # ordered by vector + bonus, scored with the row's vector scores in that order
            vals = sorted(side_scores[r], reverse=True)
            order = sorted(range(N_NEW), key=lambda j: (-(side_scores[r, j] + bonus[r, j]), j))
            for rank, j in enumerate(order):
                side_scores[r, j] = vals[rank]
    scores = np.concatenate([q @ emb.T, side_scores], axis=1).astype(np.float32)
    for r in range(len(q)):
        if boosts is not None:
            items, extra = boosts[r]
            scores[r, items] += extra
        scores[r, excl_known[r]] = -np.inf
        scores[r, N_ITEMS + excl_new[r]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


@pytest.mark.parametrize("k", [1, 10, 50])
@pytest.mark.parametrize("boosted", [False, True])
@pytest.mark.parametrize("with_bonus", [False, True])
def test_new_item_merge_is_exact(k, boosted, with_bonus):
    rng = np.random.default_rng(k)
    emb = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    # new items as strong as the best known ones, so they compete for every rank
    side = (rng.standard_normal((N_NEW, DIM)) * 1.3).astype(np.float32)
    q = rng.standard_normal((8, DIM)).astype(np.float32)
    excl_known = [np.sort(rng.choice(N_ITEMS, size=r * 5, replace=False)) for r in range(len(q))]
    excl_new = [np.sort(rng.choice(N_NEW, size=r % 4 * 5, replace=False)) for r in range(len(q))]
    boosts = None
    if boosted:
        boosts = [
            (rng.choice(N_ITEMS, 10, replace=False), rng.uniform(0, 3, 10).astype(np.float32)) for _ in q
        ]
    # the text model's history affinity: a per-user, per-new-item addition to the side scores
    bonus = rng.uniform(0, 2, (len(q), N_NEW)).astype(np.float32) if with_bonus else None
    ranker = Ranker(build_index(emb), emb)
    ids, scores = ranker.search(q, k, exclude=excl_known, boosts=boosts)
    codes = N_ITEMS + np.arange(N_NEW)
    merged, merged_scores = SideIndex(codes, side).merge(q, ids, scores, [codes[e] for e in excl_new], bonus)
    want, want_scores = brute_force(q, emb, side, k, excl_known, excl_new, boosts, bonus)
    assert (merged == want).all()
    np.testing.assert_allclose(merged_scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (merged >= N_ITEMS).any(), "the test must let new items into the answers"


def test_new_item_merge_keeps_pads_when_the_catalogue_runs_out():
    emb = np.eye(4, dtype=np.float32)
    ranker = Ranker(build_index(emb), emb)
    q = np.ones((1, 4), dtype=np.float32)
    ids, scores = ranker.search(q, 6, exclude=[np.array([0, 1, 2])])  # one known item left
    side = SideIndex(np.array([4, 5]), np.full((2, 4), 0.5, dtype=np.float32))
    merged, merged_scores = side.merge(q, ids, scores, [np.array([5])])  # one new item left
    assert merged.tolist() == [[4, 3, -1, -1, -1, -1]]
    assert np.isneginf(merged_scores[0, 2:]).all()


def test_new_item_merge_of_an_empty_side_index_is_the_index_answer():
    ids, scores = np.array([[3, 1]]), np.array([[2.0, 1.0]], dtype=np.float32)
    merged = SideIndex.empty(4).merge(np.ones((1, 4), np.float32), ids, scores)
    assert merged[0] is ids and merged[1] is scores


def test_new_item_side_index_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="codes"):
        SideIndex(np.arange(3), np.zeros((2, 4), np.float32))


def test_new_item_bonus_reorders_new_items_without_raising_them_above_known_ones():
    """The bonus picks which new items; their scores stay the row's vector scores, so the number of new
    items in the answer is the vector scores' alone."""
    emb = np.eye(4, dtype=np.float32)[:2]  # known items 0, 1
    ranker = Ranker(build_index(emb), emb)
    q = np.array([[1.0, 0.5, 0.4, 0.1]], dtype=np.float32)
    ids, scores = ranker.search(q, 3)
    side = SideIndex(np.array([2, 3]), np.eye(4, dtype=np.float32)[2:])  # new items 2 (0.4), 3 (0.1)
    plain, _ = side.merge(q, ids, scores)
    assert plain.tolist() == [[0, 1, 2]]
    bonus = np.array([[0.0, 5.0]], dtype=np.float32)  # item 3's text matches the history: it goes first
    merged, merged_scores = side.merge(q, ids, scores, None, bonus)
    assert merged.tolist() == [[0, 1, 3]]  # in item 2's place, not above the known items
    np.testing.assert_allclose(merged_scores, [[1.0, 0.5, 0.4]])
    # an excluded new item stays out whatever its bonus
    merged, _ = side.merge(q, ids, scores, [np.array([3])], bonus)
    assert merged.tolist() == [[0, 1, 2]]

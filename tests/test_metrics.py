"""Hand-computed cases for the ranking metrics and the evaluation harness."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from training.evaluation.harness import evaluate, known_items
from training.evaluation.metrics import (
    MetricAccumulator,
    batch_metrics,
    hit_matrix,
    mask_items,
    ndcg_at_k,
    recall_at_k,
    topk_items,
)

LOG2_3 = np.log2(3.0)


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), dtype=np.float32), (r, c)), shape=(len(rows), n_items))


def test_single_hit_at_rank_two():
    scores = np.array([[0.9, 0.1, 0.5, 0.3]], dtype=np.float32)
    m = batch_metrics(scores, csr([[2]], 4), ks=(1, 2), ndcg_ks=(2,))
    assert m["recall@1"][0] == 0.0
    assert m["recall@2"][0] == 1.0  # 1 hit / min(2, 1)
    assert m["ndcg@2"][0] == pytest.approx(1 / LOG2_3)  # DCG 1/log2(3), IDCG 1


def test_fewer_heldout_than_k_uses_min_denominator():
    scores = np.array([[0.9, 0.1, 0.5, 0.3]], dtype=np.float32)  # ranking 0, 2, 3, 1
    m = batch_metrics(scores, csr([[0, 3]], 4), ks=(3,), ndcg_ks=(3,))
    assert m["recall@3"][0] == 1.0  # 2 hits / min(3, 2)
    dcg = 1.0 + 1.0 / np.log2(4)  # hits at ranks 0 and 2
    idcg = 1.0 + 1.0 / LOG2_3  # two ideal hits
    assert m["ndcg@3"][0] == pytest.approx(dcg / idcg)


def test_more_heldout_than_k():
    scores = np.array([[0.9, 0.1, 0.5, 0.3]], dtype=np.float32)  # top 2: items 0, 2
    m = batch_metrics(scores, csr([[1, 2, 3]], 4), ks=(2,), ndcg_ks=(2,))
    assert m["recall@2"][0] == 0.5  # 1 hit / min(2, 3)
    assert m["ndcg@2"][0] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))


def test_ties_break_by_smaller_item_index():
    scores = np.ones((2, 5), dtype=np.float32)
    assert topk_items(scores, 3).tolist() == [[0, 1, 2], [0, 1, 2]]
    m = batch_metrics(scores.copy(), csr([[4], [1]], 5), ks=(2,), ndcg_ks=(2,))
    assert m["recall@2"].tolist() == [0.0, 1.0]
    assert m["ndcg@2"][1] == pytest.approx(1 / LOG2_3)  # item 1 is second among the ties


def test_ties_inside_and_at_the_boundary():
    scores = np.array([[2.0, 5.0, 3.0, 5.0, 3.0, 3.0]], dtype=np.float32)
    # 5 (items 1, 3), then the 3s in index order (2, 4, 5): the k=4 boundary cuts the tie after item 4
    assert topk_items(scores, 4).tolist() == [[1, 3, 2, 4]]


def test_topk_matches_brute_force_on_heavily_tied_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 300)).astype(np.float32)
    scores[:5] = -np.inf
    scores[5] = 1.0
    expected = np.stack([np.lexsort((np.arange(300), -row))[:40] for row in scores])
    assert np.array_equal(topk_items(scores, 40), expected)


def test_k_larger_than_the_catalogue():
    scores = np.array([[0.2, 0.9, 0.5]], dtype=np.float32)
    m = batch_metrics(scores, csr([[0, 1]], 3), ks=(5,), ndcg_ks=(5,))
    assert m["recall@5"][0] == 1.0  # 2 hits / min(5, 2)
    assert m["ndcg@5"][0] == pytest.approx((1 + 1 / 2) / (1 + 1 / LOG2_3))  # hits at ranks 0 and 2


def test_masking_removes_train_items():
    scores = np.array([[0.9, 0.8, 0.1, 0.2]], dtype=np.float32)
    train = csr([[0, 1]], 4)
    mask_items(scores, train)
    assert np.isneginf(scores[0, :2]).all()
    m = batch_metrics(
        np.array([[0.9, 0.8, 0.1, 0.2]], dtype=np.float32),
        csr([[3]], 4),
        ks=(1,),
        ndcg_ks=(1,),
        exclude=train,
    )
    assert m["recall@1"][0] == 1.0  # without the mask item 0 would be first and this would be 0


def test_users_without_heldout_are_excluded_from_the_mean():
    scores = np.array([[0.9, 0.1, 0.5], [0.9, 0.1, 0.5]], dtype=np.float32)
    per_user = batch_metrics(scores, csr([[0], []], 3), ks=(1,), ndcg_ks=(1,))
    assert per_user["recall@1"][0] == 1.0 and np.isnan(per_user["recall@1"][1])
    acc = MetricAccumulator(["recall@1", "ndcg@1"])
    acc.add(per_user)
    assert acc.result() == {"recall@1": 1.0, "ndcg@1": 1.0, "users": 1}


def test_accumulator_without_users_is_an_error():
    with pytest.raises(ValueError, match="no user has held-out items"):
        MetricAccumulator(["recall@1"]).result()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="NaN"):
        topk_items(np.array([[0.1, np.nan]]), 1)
    with pytest.raises(ValueError, match="k=3"):
        topk_items(np.zeros((1, 2)), 3)
    with pytest.raises(ValueError, match="mask shape"):
        mask_items(np.zeros((1, 3)), csr([[0]], 4))
    with pytest.raises(ValueError, match="k=5"):
        recall_at_k(np.zeros((1, 2), dtype=bool), np.array([1]), 5)
    with pytest.raises(ValueError, match="held-out rows"):
        hit_matrix(np.zeros((2, 1), dtype=np.int64), csr([[0]], 3))
    assert ndcg_at_k(np.array([[True]]), np.array([1]), 1)[0] == 1.0


def _toy_dataset() -> SimpleNamespace:
    # 3 users x 5 items; user 2 has nothing in valid
    train = csr([[0], [1], [2]], 5)
    valid = csr([[1], [3], []], 5)
    test = csr([[2], [4], [3]], 5)
    return SimpleNamespace(train=train, valid=valid, test=test)


def test_harness_masks_train_items_and_optionally_valid_items_on_test():
    ds = _toy_dataset()
    fixed = np.array([5.0, 4.0, 3.0, 2.0, 1.0], dtype=np.float32)  # item 0 best ... item 4 worst

    def score_fn(users: np.ndarray) -> np.ndarray:
        return np.tile(fixed, (len(users), 1))

    valid = evaluate(score_fn, ds, "valid", ks=(1,), ndcg_ks=(2,))
    # user 0: train {0} masked -> top1 = item 1 (hit); user 1: train {1} -> 0, 2, 3: item 3 at rank 2, a miss
    assert valid["users"] == 2
    assert valid["recall@1"] == pytest.approx(0.5)
    assert valid["ndcg@2"] == pytest.approx(0.5)
    # test, the paper's protocol: only train masked, so user 0's valid item 1 takes rank 0 and test item 2
    # lands on rank 1; user 1 ranks 0, 2, 3, 4 (test 4 at rank 3); user 2 ranks 0, 1, 3 (test 3 at rank 2)
    test = evaluate(score_fn, ds, "test", ks=(1,), ndcg_ks=(2,))
    assert test["users"] == 3
    assert test["recall@1"] == 0.0
    assert test["ndcg@2"] == pytest.approx((1 / LOG2_3) / 3)
    # masking valid items as well: user 0 -> item 2 first (hit); user 1 -> 0, 2, 4; user 2 unchanged
    test_masked = evaluate(score_fn, ds, "test", ks=(1,), ndcg_ks=(2,), mask_valid_on_test=True)
    assert test_masked["recall@1"] == pytest.approx(1 / 3)
    assert test_masked["ndcg@2"] == pytest.approx(1 / 3)
    assert known_items(ds, "test").nnz == 3 and known_items(ds, "test", mask_valid_on_test=True).nnz == 5


def test_harness_accepts_torch_and_checks_shapes():
    torch = pytest.importorskip("torch")
    ds = _toy_dataset()
    out = evaluate(lambda u: torch.ones(len(u), 5), ds, "valid", ks=(1,), ndcg_ks=(1,), batch_size=1)
    assert out["users"] == 2
    with pytest.raises(ValueError, match="score_fn returned shape"):
        evaluate(lambda u: np.ones((len(u), 4)), ds, "valid", ks=(1,), ndcg_ks=(1,))
    with pytest.raises(ValueError, match="unknown split"):
        evaluate(lambda u: np.ones((len(u), 5)), ds, "train")


def test_harness_batch_size_does_not_change_results():
    rng = np.random.default_rng(1)
    n_users, n_items = 37, 60
    train = sp.random(n_users, n_items, density=0.1, random_state=1, format="csr", dtype=np.float32)
    train.data[:] = 1
    held = sp.random(n_users, n_items, density=0.05, random_state=2, format="csr", dtype=np.float32)
    held.data[:] = 1
    held = held - held.multiply(train)
    held.eliminate_zeros()
    ds = SimpleNamespace(train=train, valid=held.tocsr(), test=held.tocsr())
    table = rng.standard_normal((n_users, n_items)).astype(np.float32)
    a = evaluate(lambda u: table[u].copy(), ds, "valid", ks=(5, 10), ndcg_ks=(20,), batch_size=7)
    b = evaluate(lambda u: table[u].copy(), ds, "valid", ks=(5, 10), ndcg_ks=(20,), batch_size=1000)
    assert a == pytest.approx(b)

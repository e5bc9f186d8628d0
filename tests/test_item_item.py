"""The ranker's item-item term (inference/item_item.py): its boosts against a dense computation of the
definition, its cut rows, its files, and its fit on a real dataset's validation split."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from inference.item_item import ItemItem, cut_rows, item_covariance, score_spread, strongest_rows


def _term(n_items: int = 40, dim: int = 8, keep: int = 6, top_n: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n_items, n_items)).astype(np.float32)
    np.fill_diagonal(dense, 0.0)
    table = rng.normal(size=(n_items, dim)).astype(np.float32)
    term = ItemItem(strongest_rows(dense, keep), 0.7, top_n, item_covariance(table), {"lam": 1.0})
    return term, dense, table, rng


def test_strongest_rows_keeps_each_rows_largest_positive_weights() -> None:
    term, dense, _, _ = _term(keep=6)
    rows = term.rows.toarray()
    for i in range(dense.shape[0]):
        top = np.argsort(-dense[i])[:6]
        want = {int(j) for j in top if dense[i, j] > 0}
        assert set(np.flatnonzero(rows[i])) == want
        np.testing.assert_array_equal(rows[i, list(want)], dense[i, list(want)])
    assert term.rows.data.min() > 0


def test_cutting_the_strongest_rows_is_cutting_the_dense_matrix() -> None:
    """The blend grid's smaller cuts (ItemItem.cut) are what strongest_rows gives at that cut."""
    term, dense, _, _ = _term(keep=12)
    for keep in (1, 5, 12, 30):
        cut = term.cut(keep)
        np.testing.assert_array_equal(cut.rows.toarray(), strongest_rows(dense, min(keep, 12)).toarray())
        assert cut.params["keep"] == keep and cut.weight == term.weight and cut.top_n == term.top_n
    empty = sp.csr_matrix((4, 4), dtype=np.float32)
    assert cut_rows(empty, 3).nnz == 0


def test_boosts_follow_the_definition() -> None:
    """weight · σ(h) / σ(e) · e on the user's top_n entries of e outside the history, σ over all items."""
    term, _, table, rng = _term()
    n = term.n_items
    histories = [rng.choice(n, size=s, replace=False) for s in (1, 3, 7, 12)]
    histories.append(np.array([2, 2, 5, n + 3]))  # a repeat and an item added after the version
    vectors = rng.normal(size=(len(histories), table.shape[1])).astype(np.float32)
    got = term.boosts(vectors, histories)
    rows = term.rows.toarray().astype(np.float64)
    for h, v, (items, boost) in zip(histories, vectors, got, strict=True):
        known = np.unique(h[h < n])
        e = rows[known].sum(0)
        spread = (table.astype(np.float64) @ v).std()
        want = term.weight * spread / e.std() * e
        want[known] = 0.0
        order = np.argsort(-want)[: term.top_n]
        order = order[want[order] > 0]
        assert set(items.tolist()) == set(order.tolist())
        np.testing.assert_allclose(boost, want[items], rtol=1e-5)
        assert not np.isin(items, known).any() and (boost > 0).all()
    np.testing.assert_allclose(
        score_spread(vectors, term.item_cov), (table.astype(np.float64) @ vectors.T).std(0), rtol=1e-5
    )
    # weight 0 (the grid's "off") boosts nothing
    assert all(not len(i) for i, _ in term.boosts(vectors, histories, weight=0.0))


def test_saved_term_loads_equal(tmp_path) -> None:
    term, _, _, rng = _term()
    term.save(tmp_path)
    back = ItemItem.load(tmp_path)
    assert back is not None and (back.rows != term.rows).nnz == 0
    assert (back.weight, back.top_n, back.params) == (term.weight, term.top_n, term.params)
    np.testing.assert_array_equal(back.item_cov, term.item_cov)
    assert ItemItem.load(tmp_path / "nothing-here") is None


def test_bad_terms_are_refused() -> None:
    term, _, _, _ = _term()
    with pytest.raises(ValueError, match="non-negative"):
        ItemItem(-term.rows, 1.0, 5, term.item_cov, {})
    with pytest.raises(ValueError, match="weight"):
        ItemItem(term.rows, -1.0, 5, term.item_cov, {})
    with pytest.raises(ValueError, match="square"):
        ItemItem(sp.csr_matrix((3, 4), dtype=np.float32), 1.0, 5, term.item_cov, {})


def test_fit_picks_eases_lambda_on_validation() -> None:
    """On a real amazon-office slice the fitted term's λ is the one EASE alone scores best on validation."""
    from shared_data import office_users

    from training.data.dataset import prepare
    from training.evaluation.baselines.base import selection_score
    from training.evaluation.baselines.ease import EASE
    from training.evaluation.harness import evaluate
    from training.recipe.blend import fit_item_item

    ds = prepare(office_users(1200, seed=1), "office-tiny")
    lams = [50.0, 500.0]
    table = np.random.default_rng(0).normal(size=(ds.n_items, 16)).astype(np.float32)
    term = fit_item_item(ds, table, lams, keep=30, top_n=100)
    scores = {lam: selection_score(evaluate(EASE(lam=lam).fit(ds.train).score, ds, "valid")) for lam in lams}
    assert scores[50.0] != scores[500.0]  # the choice is not a tie
    assert term.params["lam"] == max(scores, key=scores.get)
    assert term.weight == 0.0 and term.rows.shape == (ds.n_items, ds.n_items)
    assert np.diff(term.rows.indptr).max() <= 30


def test_transition_rows_count_what_came_next() -> None:
    from inference.item_item import transition_rows

    seqs = [np.array([0, 1, 2]), np.array([0, 1, 3]), np.array([3, 0]), np.array([4])]
    t = transition_rows(seqs, 5, keep=10).toarray()
    want = np.zeros((5, 5), dtype=np.float32)
    for a, b in [(0, 1), (1, 2), (0, 1), (1, 3), (3, 0)]:
        want[a, b] += 1
    np.testing.assert_array_equal(t, want)
    assert transition_rows(seqs, 5, keep=1).toarray()[1].sum() == 1  # each row's strongest only


def test_transitions_score_what_follows_the_newest_items_and_survive_save_load(tmp_path) -> None:
    """t = Σ_k 0.5^k T[h_{-1-k}] over the next_recent newest items, scaled as the EASE part; the order of
    the history matters for them (not for the EASE part), and off (weight 0) they add nothing."""
    from dataclasses import replace

    from inference.item_item import transition_rows

    term, _, table, rng = _term()
    n = term.n_items
    seqs = [rng.permutation(n)[:15] for _ in range(60)]
    t = replace(term, weight=0.0, next_rows=transition_rows(seqs, n, 50), next_weight=1.5, next_recent=2)
    assert t.active and not replace(t, next_weight=0.0).active
    h = np.array([5, 9, 3, 9])  # 9 twice: its newest place counts
    v = rng.normal(size=(1, table.shape[1])).astype(np.float32)
    ((items, boost),) = t.boosts(v, [h])
    dense = t.next_rows.toarray().astype(np.float64)
    e = dense[9] + 0.5 * dense[3]
    want = 1.5 * (table.astype(np.float64) @ v[0]).std() / e.std() * e
    want[[5, 9, 3]] = 0.0
    top = np.argsort(-want)[: t.top_n]
    top = top[want[top] > 0]
    assert set(items.tolist()) == set(top.tolist())
    np.testing.assert_allclose(boost, want[items], rtol=1e-5)
    ((other, _),) = t.boosts(v, [h[::-1]])  # another newest item, other transitions
    assert set(other.tolist()) != set(items.tolist())
    assert all(not len(i) for i, _ in t.boosts(v, [h], next_weight=0.0))
    t.save(tmp_path)
    back = ItemItem.load(tmp_path)
    assert back is not None and (back.next_rows != t.next_rows).nnz == 0
    assert (back.next_weight, back.next_recent) == (1.5, 2)
    term.save(tmp_path / "plain")
    assert ItemItem.load(tmp_path / "plain").next_rows is None  # a term saved without them
    with pytest.raises(ValueError, match="next_weight"):
        replace(t, next_weight=-1.0)

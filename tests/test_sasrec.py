"""SASRec: it learns order, it is causal, it is deterministic, and the harness runs it on validation only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training.data.dataset import prepare
from training.data.ingest import read_source
from training.evaluation.baselines import get, select_and_test
from training.evaluation.baselines.base import selection_score
from training.evaluation.baselines.pop import Pop
from training.evaluation.baselines.sasrec import SASRec, _left_padded, _make_net
from training.evaluation.harness import evaluate
from training.evaluation.sequences import rows_in_order, train_sequences

QUICK = {"dim": 32, "max_epochs": 30, "eval_every": 5, "patience": 2, "dropout": 0.1, "budget_s": 120.0}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _planted(n_users: int = 300, n_items: int = 60, seed: int = 0):
    """Users walk a hidden cycle of items from a random start; validation is the step after the last one.

    Every item is equally popular and every user's set is a contiguous arc, so only the order tells which
    end of the arc the user is at (a set model sees both ends alike)."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(n_items)
    seqs, nxt = [], []
    for _ in range(n_users):
        start, n = rng.integers(n_items), rng.integers(4, 10)
        walk = cycle[(start + np.arange(n + 1)) % n_items]
        seqs.append(walk[:n])
        nxt.append(walk[n])
    indptr = np.cumsum([0] + [len(s) for s in seqs])
    ordered = sp.csr_matrix(
        (np.ones(indptr[-1], np.float32), np.concatenate(seqs), indptr), shape=(n_users, n_items)
    )
    train = sp.csr_matrix(ordered.toarray())  # sorted indices: the order lives in `ordered` only
    valid = sp.csr_matrix((np.ones(n_users, np.float32), (np.arange(n_users), nxt)), shape=(n_users, n_items))
    return ordered, train, valid


def test_learns_a_planted_sequence_far_better_than_popularity():
    ordered, train, valid = _planted()
    view = SimpleNamespace(train=train, valid=valid, test=valid)
    model = SASRec(**QUICK).fit(train, valid, sequences=ordered)
    sas = evaluate(model.score, view, "valid")
    pop = evaluate(Pop().fit(train).score, view, "valid")
    assert sas["recall@20"] > 0.9 and sas["ndcg@100"] > 0.6, sas
    assert selection_score(sas) > 2 * selection_score(pop), (sas, pop)


def test_a_future_item_does_not_change_a_prefix():
    torch.manual_seed(0)
    net = _make_net(n_items=30, dim=16, blocks=2, heads=2, dropout=0.0, max_len=8).eval()
    seq = torch.tensor([[0, 0, 3, 7, 9, 2, 5, 11], [4, 8, 15, 16, 23, 1, 2, 3]])
    changed = seq.clone()
    changed[:, 5:] = torch.tensor([20, 21, 22])
    with torch.no_grad():
        a, b = net(seq), net(changed)
    assert torch.equal(a[:, :5], b[:, :5])  # positions up to 4 read nothing after them
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    earlier = seq.clone()
    earlier[:, 3] = 28
    with torch.no_grad():
        c = net(earlier)
    assert not torch.allclose(a[:, -1], c[:, -1])  # while the last position does read the past


def test_left_padding_does_not_change_the_scores():
    torch.manual_seed(0)
    net = _make_net(n_items=30, dim=16, blocks=2, heads=1, dropout=0.0, max_len=8).eval()
    short = torch.tensor([[3, 7, 9]])
    padded = torch.tensor([[0, 0, 0, 3, 7, 9]])
    with torch.no_grad():
        assert torch.allclose(net(short)[:, -1], net(padded)[:, -1], atol=1e-6)


def test_left_padded_windows_keep_the_last_items_in_order():
    seqs = sp.csr_matrix((np.ones(6), np.array([4, 2, 9, 1, 3, 0]), np.array([0, 4, 4, 6])), shape=(3, 10))
    out, lengths = _left_padded(seqs, 3)
    assert out.tolist() == [[3, 10, 2], [0, 0, 0], [0, 4, 1]]  # item i as i + 1; the newest last
    assert lengths.tolist() == [3, 0, 2]


def test_deterministic_under_a_seed():
    ordered, train, valid = _planted(n_users=120)
    params = {**QUICK, "max_epochs": 4, "eval_every": 2}
    users = np.arange(20)
    a = SASRec(**params, seed=3).fit(train, valid, sequences=ordered).score(users)
    b = SASRec(**params, seed=3).fit(train, valid, sequences=ordered).score(users)
    c = SASRec(**params, seed=4).fit(train, valid, sequences=ordered).score(users)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_needs_the_order():
    _, train, valid = _planted(n_users=50)
    with pytest.raises(ValueError, match="time order"):
        SASRec(**QUICK).fit(train, valid)


# --------------------------------------------------------------------------------- through the harness
def _tiny_source(tmp_path, n_users: int = 60, n_items: int = 25, seed: int = 0):
    """A RecBole .inter file whose rows are chronological within a user, with item ids not in time order."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(n_items)
    lines = ["user_id:token\titem_id:token"]
    for u in range(n_users):
        start = rng.integers(n_items)
        lines += [f"u{u}\ti{cycle[(start + k) % n_items]}" for k in range(rng.integers(6, 12))]
    path = tmp_path / "tiny.inter"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_sequences_follow_the_file_order(tmp_path):
    path = _tiny_source(tmp_path)
    ds = prepare(read_source(path), "tiny", k_core=1)
    seqs = train_sequences(ds)
    assert (seqs.toarray() == ds.train.toarray()).all()
    items, users = ds.item_index(), ds.user_index()
    file_order: dict[int, list[int]] = {}
    for line in path.read_text().splitlines()[1:]:
        u, i = line.split("\t")
        file_order.setdefault(users[u], []).append(items[i])
    for u, row in enumerate(rows_in_order(seqs, range(ds.n_users))):
        train = set(ds.train[u].indices)
        assert row.tolist() == [i for i in file_order[u] if i in train]


def test_train_sequences_refuse_a_source_that_does_not_match(tmp_path):
    ds = prepare(read_source(_tiny_source(tmp_path)), "tiny", k_core=1)
    other = read_source(_tiny_source(tmp_path, seed=1))
    with pytest.raises(ValueError, match="not the data"):
        train_sequences(ds, other)


def test_the_harness_runs_it_and_chooses_on_validation_only(tmp_path):
    ds = prepare(read_source(_tiny_source(tmp_path)), "tiny", k_core=1)
    grid = {"dropout": [0.1, 0.5]}
    fixed = {**QUICK, "max_epochs": 6, "eval_every": 2}
    res = select_and_test(get("sasrec"), ds, grid=grid, fixed=fixed, log=lambda *_: None)
    assert res.model == "SASRec" and len(res.trials) == 2
    best = max(res.trials, key=lambda t: selection_score(t.valid))
    assert res.params["dropout"] == best.params["dropout"] and res.valid == best.valid
    assert res.info["best_epoch"] in (2, 4, 6)
    # another test split changes the test row only: no choice ever reads it
    rng = np.random.default_rng(1)
    shuffled = sp.csr_matrix(ds.test.toarray()[:, rng.permutation(ds.n_items)])
    ds_other = SimpleNamespace(**{**ds.__dict__, "test": shuffled})
    ds_other.item_index, ds_other.user_index = ds.item_index, ds.user_index
    other = select_and_test(get("sasrec"), ds_other, grid=grid, fixed=fixed, log=lambda *_: None)
    assert other.params == res.params and [t.valid for t in other.trials] == [t.valid for t in res.trials]
    assert other.test != res.test

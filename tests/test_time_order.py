"""The users' time order, kept from the source to the prompt: prepare() ranks every event in its user's time
line, the graph lists train items oldest first, fine-tuning can keep that order and cut it (the newest events
as targets), a retrain's snapshot puts new events after the old ones, and all of it survives save/load."""

from __future__ import annotations

import numpy as np
import pytest

from graphprompt.graph import BipartiteGraph
from graphprompt.prompts import PromptBuilder, PromptConfig
from graphprompt.tokenizer import RecTokenizer
from training.data.dataset import PreparedDataset, RawInteractions, prepare
from training.data.snapshot import Event, merge
from training.recipe.finetune import PredictiveData


def _dataset(split: str = "random") -> PreparedDataset:
    """12 users, each with 12 items in a user-specific shuffled time order; timestamps out of file order."""
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(12):
        order = rng.permutation(14)[:12]
        for step, i in enumerate(order):
            users.append(f"u{u:02d}")
            items.append(f"i{i:02d}")
            ts.append(1000.0 * u + 10.0 * step)
    perm = rng.permutation(len(users))  # the file is not in time order: the timestamps say it
    raw = RawInteractions([users[k] for k in perm], [items[k] for k in perm], timestamps=np.asarray(ts)[perm])
    return prepare(raw, "t", k_core=1, split=split)


def _time_line(ds: PreparedDataset, u: int) -> list[int]:
    """User u's items (all splits) oldest first, from the source's timestamps as _dataset wrote them."""
    t = ds.times.getrow(u)
    return [int(i) for i in t.indices[np.argsort(t.data)]]


def _builder(ds: PreparedDataset, times: bool = True, **prompt) -> PromptBuilder:
    graph = BipartiteGraph.from_matrix(ds.train, ds.times if times else None)
    tok = RecTokenizer.train(
        ["a b c"], n_users=ds.n_users, n_items=ds.n_items, vocab_size=300, min_frequency=1
    )
    return PromptBuilder(tok, graph, PromptConfig(**prompt))


def _history(prompt, builder: PromptBuilder, u: int) -> list[int]:
    """The item indices a predictive prompt lists as the user's history, in prompt order."""
    n = builder.graph.n_users
    nodes = prompt.node_ids
    # the history is the first run of item nodes after the user token
    start = int(np.flatnonzero(nodes == u)[0]) + 1
    out = []
    for node in nodes[start:]:
        if node >= n:
            out.append(int(node) - n)
        elif out:  # the first word or user after the items ends the history
            break
    return out


def test_prepare_ranks_every_event_in_its_users_time_line_and_saves_it(tmp_path) -> None:
    ds = _dataset()
    all_events = ds.train + ds.valid + ds.test
    assert ds.times.nnz == all_events.nnz
    for u in range(ds.n_users):
        row = ds.times.getrow(u)
        assert sorted(row.data) == list(range(1, row.nnz + 1))  # 1..n, one per event
    # the ranks follow the timestamps, not the file order
    raw_u = ds.user_ids.index("u03")
    line = [ds.item_ids[i] for i in _time_line(ds, raw_u)]
    rng = np.random.default_rng(0)
    expected = None
    for u in range(12):
        order = rng.permutation(14)[:12]
        if u == 3:
            expected = [f"i{i:02d}" for i in order]
    assert line == expected
    back = PreparedDataset.load(ds.save(tmp_path / "d"))
    assert (back.times != ds.times).nnz == 0
    # a folder written before the order was kept loads without it
    for f in ("times.indptr.npy", "times.indices.npy", "times.data.npy"):
        (tmp_path / "d" / f).unlink()
    assert PreparedDataset.load(tmp_path / "d").times is None


def test_the_graph_lists_train_items_oldest_first_and_keeps_the_order_on_disk(tmp_path) -> None:
    ds = _dataset()
    g = BipartiteGraph.from_matrix(ds.train, ds.times)
    for u in range(ds.n_users):
        train = set(ds.train.getrow(u).indices)
        expected = [i for i in _time_line(ds, u) if i in train]
        assert g.user_items_in_time(u).tolist() == expected
        assert g.user_items(u).tolist() == sorted(expected)  # the index order is unchanged
    back = BipartiteGraph.load(g.save(tmp_path / "g"))
    assert all(np.array_equal(back.user_items_in_time(u), g.user_items_in_time(u)) for u in range(ds.n_users))
    plain = BipartiteGraph.from_matrix(ds.train)
    assert not plain.has_time and plain.user_items_in_time(0).tolist() == plain.user_items(0).tolist()
    with pytest.raises(ValueError, match="time rank at every edge"):
        BipartiteGraph.from_matrix(ds.train, ds.valid)  # misses the train edges


def test_a_snapshot_puts_new_events_after_each_users_old_ones() -> None:
    ds = _dataset()
    u0, u1 = ds.user_ids[0], ds.user_ids[1]
    known0 = {ds.item_ids[i] for i in (ds.train + ds.valid + ds.test).getrow(0).indices}
    new0 = [it for it in ds.item_ids if it not in known0][:2]
    events = [Event(u0, new0[1], 1), Event("newbie", ds.item_ids[0], 2), Event(u0, new0[0], 3)]
    events += [Event("newbie", ds.item_ids[1], 4), Event(u1, "brand-new-item", 5)]
    snap = merge(ds, events, holdout=False).data
    assert snap.times is not None
    line0 = [snap.item_ids[i] for i in _time_line(snap, 0)]
    assert line0[-2:] == [new0[1], new0[0]] and len(line0) == len(known0) + 2
    assert [snap.item_ids[i] for i in _time_line(snap, snap.user_ids.index("newbie"))] == [
        ds.item_ids[0],
        ds.item_ids[1],
    ]
    g = BipartiteGraph.from_matrix(snap.train, snap.times)  # every train edge has its rank
    assert g.user_items_in_time(1)[-1] == snap.item_ids.index("brand-new-item")


def test_time_ordered_prompts_list_the_history_oldest_first_and_cuts_predict_the_newest() -> None:
    ds = _dataset()
    b = _builder(ds, history_order="time", max_history=50, n_co_users=0, n_two_hop_items=0)
    g = b.graph
    data = PredictiveData(
        b, g, seed=3, target_frac=0.5, target_variants=8, all_train_targets=True, next_targets=0.5
    )
    for u in range(ds.n_users):
        assert _history(data.eval_prompt(u), b, u) == g.user_items_in_time(u).tolist()
    cuts = plain = 0
    for u in range(ds.n_users):
        line = g.user_items_in_time(u).tolist()
        for v in range(8):
            visible, targets, _, _, cut = data.variant(u, v)
            pos = [line.index(i) for i in visible]
            assert pos == sorted(pos)  # visible history in time order either way
            if cut:
                cuts += 1
                assert line[: len(visible)] == list(visible) and line[len(visible) :] == list(targets)
            else:
                plain += 1
                assert sorted([*visible, *targets]) == sorted(line)
    assert cuts > 10 and plain > 10
    prompts, targets, _ = data.epoch(0, np.random.default_rng(0))
    for u, p, t in zip(data.users, prompts, targets, strict=True):
        visible, tgt, _, _, cut = data.variant(int(u), 0)
        assert _history(p, b, int(u)) == list(visible)  # not shuffled
        # a cut predicts its future only; otherwise all train items (all_train_targets)
        assert sorted(t) == (sorted(tgt) if cut else sorted(g.user_items(int(u))))


def test_the_shuffled_default_is_unchanged_and_time_options_need_the_order() -> None:
    ds = _dataset()
    b = _builder(ds, max_history=50, n_co_users=0, n_two_hop_items=0)
    data = PredictiveData(b, b.graph, seed=3, target_frac=0.5, target_variants=4)
    for u in range(3):
        rng = np.random.default_rng([3, 7, u, 1])
        items = rng.permutation(b.graph.user_items(u))
        n_t = int(round(0.5 * len(items)))
        visible, targets, _, _, cut = data.variant(u, 1)
        assert not cut and list(targets) == list(items[:n_t]) and list(visible) == list(items[n_t:])
        expected = np.random.default_rng([3, 11, u]).permutation(b.graph.user_items(u)).tolist()
        assert _history(data.eval_prompt(u), b, u) == expected
    with pytest.raises(ValueError, match="history_order='time'"):
        PredictiveData(b, b.graph, seed=0, next_targets=0.5)
    untimed = _builder(ds, times=False, history_order="time")
    with pytest.raises(ValueError, match="prepare it again"):
        PredictiveData(untimed, untimed.graph, seed=0)
    with pytest.raises(ValueError, match="history_order must be one of"):
        PromptConfig(history_order="newest")


def test_a_published_version_serves_a_known_users_train_items_in_their_file_order() -> None:
    """Real data (amazon-office rows are in time order within a user, no timestamps): the exported and
    published version's graph, which the service reads, lists a user's train items in that order."""
    from service_support import SLICE_USERS, tiny_store
    from shared_data import office_users

    from inference.version import open_version
    from model_store import ModelStore

    store = tiny_store()
    raw = office_users(SLICE_USERS)
    graph = open_version(ModelStore(store.root).path(store.versions[0])).graph
    assert graph.has_time
    checked = 0
    for u, user in enumerate(store.user_ids[:40]):
        train = graph.user_items_in_time(u)
        if len(train) < 3:
            continue
        file_order = [it for usr, it in zip(raw.users, raw.items, strict=True) if usr == user]
        train_ids = [store.item_ids[i] for i in train]
        assert train_ids == [it for it in file_order if it in set(train_ids)]
        checked += 1
    assert checked >= 10


def test_history_labels_ask_each_history_item_for_the_next_one_and_the_last_for_what_followed() -> None:
    ds = _dataset()
    b = _builder(ds, history_order="time", max_history=50, n_co_users=3, n_two_hop_items=5)
    data = PredictiveData(b, b.graph, seed=1, target_variants=4, next_targets=1.0)
    prompts, targets, after = data.epoch(0, np.random.default_rng(0))
    rows = list(range(5))
    labels = b.history_labels([prompts[r] for r in rows], [after[r] for r in rows])
    ids, mask, _ = PromptBuilder.collate([prompts[r] for r in rows])
    assert labels.shape == ids.shape
    for r in rows:
        u = int(data.users[r])
        visible, tgt, _, _, cut = data.variant(u, 0)
        assert cut and after[r] == tgt[0] == b.graph.user_items_in_time(u)[len(visible)]
        row = labels[r][labels[r] >= 0]
        # one label per history item: the next history item, then the first target
        assert row.tolist() == [*visible[1:], tgt[0]]
        # the labels sit on the history items' own positions (left-padded layout)
        pos = np.flatnonzero(labels[r] >= 0)
        item_tokens = ids[r, pos] - b.tok.item_offset
        assert item_tokens.tolist() == list(visible)
    none = b.history_labels([prompts[0]], [-1])
    assert (none[0] >= 0).sum() == len(data.variant(int(data.users[0]), 0)[0]) - 1


def test_seq_loss_and_next_targets_need_the_time_order() -> None:
    from training.recipe.train import TrainConfig

    with pytest.raises(ValueError, match="history_order=time"):
        TrainConfig(dataset="x", seq_loss=1.0)
    with pytest.raises(ValueError, match="seq_loss must be"):
        TrainConfig(dataset="x", seq_loss=-1.0, prompt={"history_order": "time"})
    TrainConfig(dataset="x", seq_loss=1.0, next_targets=0.5, prompt={"history_order": "time"})


def test_the_markov_probe_scores_a_split_from_its_time_order(tmp_path, capsys) -> None:
    """benchmarks/markov_probe.py on a prepared temporal split: a deterministic chain (each user walks the
    same cycle) is found exactly, and data without its time order is refused by name."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import markov_probe

    users, items = [], []
    for u in range(30):  # every user walks i0 -> i1 -> ... -> i7 from a different start
        for step in range(8):
            users.append(f"u{u:02d}")
            items.append(f"i{(u + step) % 8}")
    ds = prepare(RawInteractions(users, items), "cycle", k_core=1, split="temporal")
    ds.save(tmp_path / "cycle")
    markov_probe.main([str(tmp_path / "cycle"), "--recent", "1"])
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][0]["valid"]["recall@20"] == 1.0  # the next item is always the one that followed
    ds.times = None
    ds.save(tmp_path / "untimed")
    with pytest.raises(SystemExit, match="no time order"):
        markov_probe.main([str(tmp_path / "untimed")])

"""prepare(): rating threshold, iterative k-core, dense ids, random/temporal splits; atomic save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data.dataset import PreparedDataset, RawInteractions, kcore, prepare


def _raw(pairs: list[tuple[str, str]], **kw) -> RawInteractions:
    return RawInteractions([u for u, _ in pairs], [i for _, i in pairs], **kw)


def _edges(ds: PreparedDataset, split: str) -> set[tuple[str, str]]:
    m = getattr(ds, split).tocoo()
    return {(ds.user_ids[u], ds.item_ids[i]) for u, i in zip(m.row, m.col, strict=True)}


def _all_edges(ds: PreparedDataset) -> set[tuple[str, str]]:
    return _edges(ds, "train") | _edges(ds, "valid") | _edges(ds, "test")


def test_rating_threshold_keeps_strictly_greater() -> None:
    pairs = [("u", "a"), ("u", "b"), ("u", "c"), ("u", "d")]
    raw = _raw(pairs, ratings=np.array([5, 3, 4, 3.5], dtype=np.float32))
    assert {i for _, i in _all_edges(prepare(raw, "t", k_core=1))} == {"a", "c", "d"}
    assert len(_all_edges(prepare(raw, "t", rating_threshold=None, k_core=1))) == 4
    assert len(_all_edges(prepare(raw, "t", rating_threshold=4.0, k_core=1))) == 1
    no_ratings = prepare(_raw(pairs), "t", k_core=1)
    assert len(_all_edges(no_ratings)) == 4 and no_ratings.split["rating_threshold"] is None


def test_kcore_is_iterative() -> None:
    # c has one user, so u3 drops to one item and goes too (a single pass would miss it); u4/d go at once.
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c"), ("u4", "d")]
    ds = prepare(_raw(pairs), "t", k_core=2)
    assert ds.user_ids == ["u1", "u2"] and ds.item_ids == ["a", "b"]
    assert _all_edges(ds) == {("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")}
    users = np.array([0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 0, 1, 0, 2, 3])
    np.testing.assert_array_equal(kcore(users, items, 2), [1, 1, 1, 1, 0, 0, 0])
    assert kcore(users, items, 1).all()


def test_nothing_left_and_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="nothing is left"):
        prepare(_raw([("u", "a")]), "t", k_core=2)
    with pytest.raises(ValueError, match="no interactions"):
        prepare(_raw([]), "t")
    with pytest.raises(ValueError, match="unknown split"):
        prepare(_raw([("u", "a")]), "t", k_core=1, split="weird")


def test_duplicates_collapse_to_the_earliest_event() -> None:
    raw = _raw([("u", "a"), ("u", "b"), ("u", "a")], timestamps=np.array([50.0, 10.0, 5.0]))
    ds = prepare(raw, "t", k_core=1, split="temporal")
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == 2
    # the repeated "a" counts at time 5 (its earliest), so "b" at time 10 is the last event -> test
    assert _edges(ds, "test") == {("u", "b")}


def test_dense_ids_both_ways_and_item_text_aligned() -> None:
    pairs = [(f"user{u}", f"item{(u + k) % 7}") for u in range(7) for k in range(3)]
    text = {f"item{i}": {"title": f"T{i}"} for i in range(7) if i != 3}
    ds = prepare(_raw(pairs, item_text=text), "t", k_core=1)
    assert ds.user_ids == sorted(ds.user_ids) and ds.item_ids == sorted(ds.item_ids)
    assert all(ds.user_ids[k] == u for u, k in ds.user_index().items())
    assert all(ds.item_ids[k] == i for i, k in ds.item_index().items())
    assert ds.item_text["title"] == [text.get(i, {}).get("title", "") for i in ds.item_ids]
    assert ds.item_text["title"][ds.item_index()["item3"]] == ""


def _varied(seed: int = 0, n_users: int = 40) -> RawInteractions:
    """Users with 1..40 events each over 60 items, random timestamps."""
    rng = np.random.default_rng(seed)
    pairs, ts = [], []
    for u in range(n_users):
        for i in rng.choice(60, size=u + 1, replace=False):
            pairs.append((f"u{u:02d}", f"i{i:02d}"))
            ts.append(float(rng.integers(0, 10**6)))
    return _raw(pairs, timestamps=np.array(ts))


@pytest.mark.parametrize("split", ["random", "temporal"])
def test_split_sizes_disjoint_and_complete(split: str) -> None:
    raw = _varied()
    ds = prepare(raw, "t", k_core=1, split=split)
    tr, va, te = ds.train.toarray(), ds.valid.toarray(), ds.test.toarray()
    assert (
        not ((tr > 0) & (va > 0)).any()
        and not ((tr > 0) & (te > 0)).any()
        and not ((va > 0) & (te > 0)).any()
    )
    assert _all_edges(ds) == set(zip(raw.users, raw.items, strict=True))
    n = (tr + va + te).sum(axis=1)
    # random: the paper's max(1, floor(0.1 n)); temporal: leave-last-out (one each)
    k = np.maximum(1, n // 10) if split == "random" else np.ones_like(n)
    np.testing.assert_array_equal(te.sum(axis=1), k)
    np.testing.assert_array_equal(va.sum(axis=1), np.minimum(k, n - k))  # a one-event user has no validation


def test_random_split_is_deterministic_under_a_seed() -> None:
    raw = _varied()
    a, b = prepare(raw, "t", k_core=1, seed=7), prepare(raw, "t", k_core=1, seed=7)
    c = prepare(raw, "t", k_core=1, seed=8)
    assert (a.test != b.test).nnz == 0 and (a.valid != b.valid).nnz == 0 and a.fingerprint == b.fingerprint
    assert (a.test != c.test).nnz > 0 and a.fingerprint != c.fingerprint


def test_temporal_split_takes_the_last_events() -> None:
    raw = _varied(seed=3)
    ds = prepare(raw, "t", k_core=1, split="temporal")
    by_user: dict[str, list[tuple[float, str]]] = {}
    for u, i, t in zip(raw.users, raw.items, raw.timestamps, strict=True):
        by_user.setdefault(u, []).append((t, i))
    test, valid = _edges(ds, "test"), _edges(ds, "valid")
    for u, events in by_user.items():
        order = [i for _, i in sorted(events)]  # leave-last-out: one test and one validation event per user
        assert {i for uu, i in test if uu == u} == {order[-1]}
        assert {i for uu, i in valid if uu == u} == ({order[-2]} if len(order) > 1 else set())


def test_temporal_without_timestamps_uses_file_order() -> None:
    ds = prepare(_raw([("u", "c"), ("u", "a"), ("u", "b")]), "t", k_core=1, split="temporal")
    assert _edges(ds, "test") == {("u", "b")} and _edges(ds, "valid") == {("u", "a")}


def test_reviews_are_kept_for_train_edges_only() -> None:
    raw = _varied()
    raw.reviews = {(u, i): f"review {u} {i}" for u, i in zip(raw.users, raw.items, strict=True)}
    raw.reviews[("nobody", "i00")] = "dropped: unknown user"
    ds = prepare(raw, "t", k_core=1)
    train = _edges(ds, "train")
    assert len(ds.reviews) == len(train)
    assert {(ds.user_ids[u], ds.item_ids[i]) for u, i in ds.reviews} == train
    u, i = next(iter(ds.reviews))
    assert ds.reviews[(u, i)] == f"review {ds.user_ids[u]} {ds.item_ids[i]}"


def test_save_load_round_trip(tmp_path) -> None:
    raw = _varied()
    raw.item_text = {"i01": {"title": "Pen é", "brand": "Acme"}}
    raw.reviews = {(u, i): "nice" for u, i in zip(raw.users, raw.items, strict=True)}
    ds = prepare(raw, "round", k_core=1, seed=5)
    out = ds.save(tmp_path / "ds")
    back = PreparedDataset.load(out)
    for f in ("name", "user_ids", "item_ids", "item_text", "split", "fingerprint", "reviews", "source"):
        assert getattr(back, f) == getattr(ds, f), f
    for s in ("train", "valid", "test"):
        got, want = getattr(back, s), getattr(ds, s)
        assert got.shape == want.shape and got.dtype == np.float32 and (got != want).nnz == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folder left behind


def test_save_replaces_a_dataset_but_not_other_folders(tmp_path) -> None:
    ds = prepare(_varied(), "t", k_core=1)
    ds.save(tmp_path / "ds")
    ds2 = prepare(_varied(), "t2", k_core=1, seed=1)
    ds2.save(tmp_path / "ds")
    assert PreparedDataset.load(tmp_path / "ds").name == "t2"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        ds.save(other)
    assert (other / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "other"]


def test_load_rejects_missing_or_damaged_folders(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="edgerec data prepare"):
        PreparedDataset.load(tmp_path)
    out = prepare(_varied(), "t", k_core=1).save(tmp_path / "ds")
    np.save(out / "test.indptr.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="does not match"):
        PreparedDataset.load(out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "format_version": 999}))
    with pytest.raises(ValueError, match="re-prepare"):
        PreparedDataset.load(out)

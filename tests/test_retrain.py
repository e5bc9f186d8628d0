"""``edgerec retrain`` end to end against a real Redis: interactions written through the service's write path
(``Cache.append_interactions``), tiny real models (``tiny_store``), the real model store.

Exactly once: two retrains read disjoint ranges that together hold every write; a retrain stopped after
reading, after training or after publishing (the ``EDGEREC_RETRAIN_FAIL_AT`` test hook) and run again
learns every interaction once; what arrives during a retrain waits for the next. The gate refuses a worse
candidate and leaves the served version in place.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from service_support import delete_prefix, redis_url_or_skip, tiny_store, unique_prefix
from shared_data import office_users

from edgerec.retrain import FAIL_ENV, InjectedFailure, load_checkpoint, retrain
from inference.item_item import ItemItem, strongest_rows
from model_store import ModelStore
from service.cache import Cache
from service.metrics import RETRAIN_STATUS_FILE
from service.redis_conn import make_client
from training.data.dataset import PreparedDataset
from training.evaluation.baselines.ease import EASE

SHARDS = 4
EPOCHS = 1


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(FAIL_ENV, raising=False)
    import torch

    torch.set_num_threads(1)
    url = redis_url_or_skip()
    tiny = tiny_store()
    root = tmp_path / "store"
    shutil.copytree(tiny.root, root)
    prefix = unique_prefix()
    yield {"url": url, "root": root, "prefix": prefix, "tiny": tiny}
    delete_prefix(url, prefix)


def write(url: str, prefix: str, events: list[tuple[str, list[str]]]) -> list[str]:
    """Each (user, items) through the service's write path; returns the stream ids."""

    async def go():
        cache = Cache(make_client(url, 2.0), prefix, stream_shards=SHARDS)
        ids = []
        for n, (user, items) in enumerate(events):
            res = await cache.append_interactions(user, items, [time.time() + n] * len(items), "v-test")
            ids.append(res.stream_id)
        await cache.client.aclose()
        return ids

    return asyncio.run(go())


def new_traffic(tiny, n_users: int, start: int = 0) -> list[tuple[str, list[str]]]:
    """Real amazon-office users beyond the tiny slice, in time order, as live traffic: each user's known
    items one write at a time (plus one item the served version has never seen for every other user)."""
    raw = office_users(460)
    known_users, known_items = set(tiny.user_ids), set(tiny.item_ids)
    per_user: dict[str, list[tuple[float, str]]] = {}
    for k, (u, i) in enumerate(zip(raw.users, raw.items, strict=True)):
        if u not in known_users and i in known_items:
            t = float(raw.timestamps[k]) if raw.timestamps is not None else float(k)
            per_user.setdefault(u, []).append((t, i))
    users = sorted(u for u, rows in per_user.items() if len({i for _, i in rows}) >= 3)[
        start : start + n_users
    ]
    out = []
    for n, u in enumerate(users):
        items = list(dict.fromkeys(i for _, i in sorted(per_user[u])))
        if n % 2:
            items.insert(1, f"new-item-{n % 3}")
        out += [(u, [items[0]]), (u, items[1:-1]), (u, [items[-1]])]
    return out


def run(env, **kw):
    args = {
        "store_root": env["root"],
        "redis_url": env["url"],
        "prefix": env["prefix"],
        "shards": SHARDS,
        "epochs": EPOCHS,
        "min_holdout": 1,  # these tests feed a few dozen users; the size floor has its own test
        "echo": lambda m: None,
    }
    return retrain(**(args | kw))


def interactions(events) -> int:
    return sum(len(items) for _, items in events)


def test_retrain_reads_exactly_once_across_two_retrains(env):
    store = ModelStore(env["root"])
    served = store.current()
    a = new_traffic(env["tiny"], 12)
    b = new_traffic(env["tiny"], 8, start=12)
    ids_a = write(env["url"], env["prefix"], a)
    first = run(env, tolerance=1.0)  # this test is about the stream, not the gate
    assert first.status == "promoted" and first.version != served
    extra = store.manifest(first.version).extra["retrain"]
    assert extra["base_version"] == served
    assert extra["stream"]["entries"] == len(a) and extra["stream"]["interactions"] == interactions(a)
    shards = extra["stream"]["shards"]
    assert sum(s["count"] for s in shards.values()) == len(a)
    assert {s["last"] for s in shards.values() if s["count"]} <= set(ids_a)
    ck = load_checkpoint(env["root"] / "retrain")
    assert ck.version == first.version and ck.positions == {k: s["upper"] for k, s in shards.items()}
    # new users and items got dense ids after the served ones, and the published version serves them
    version_users = json.loads((store.path(first.version) / "user_ids.json").read_text())
    version_items = json.loads((store.path(first.version) / "item_ids.json").read_text())
    assert version_users[: len(env["tiny"].user_ids)] == env["tiny"].user_ids
    assert {u for u, _ in a} <= set(version_users)
    assert {"new-item-0", "new-item-1", "new-item-2"} <= set(version_items)
    snap1 = PreparedDataset.load(extra["dataset_dir"])
    assert snap1.train.nnz + snap1.test.nnz > 0 and extra["snapshot"]["holdout"] == snap1.test.nnz
    # the warm start keeps the served version's prior weight and item-item term (λ, cut, weight: a
    # one-point grid), it does not re-pick them; the term's rows are refitted on the snapshot
    new_m = json.loads((store.path(first.version) / "metrics.json").read_text())
    served_m = json.loads((store.path(served) / "metrics.json").read_text())
    assert new_m["prior"]["beta"] == served_m["prior"]["beta"]
    assert [(p["beta"], p["weight"]) for p in new_m["blend_grid"]] == [
        (served_m["prior"]["beta"], served_m["item_item"]["weight"])
    ]
    for key in ("lam", "keep", "top_n"):
        assert new_m["item_item"][key] == served_m["item_item"][key]
    assert len(json.loads((store.path(first.version) / "item_item" / "params.json").read_text())) > 0
    term = ItemItem.load(store.path(first.version))
    assert term is not None and term.n_items == len(version_items)
    # judged by the gate without the holdout, the published term is refitted with it (and valid) in
    every = (snap1.train + snap1.valid + snap1.test).tocsr()
    every.data[:] = 1
    assert extra["item_item_refit"]["interactions"] == every.nnz == term.params["refit_interactions"]
    want = strongest_rows(EASE(lam=term.params["lam"]).fit(every).weights, term.params["keep"])
    assert (term.rows != want).nnz == 0

    ids_b = write(env["url"], env["prefix"], b)
    second = run(env, tolerance=1.0)
    extra2 = store.manifest(second.version).extra["retrain"]
    assert extra2["stream"]["entries"] == len(b) and extra2["base_version"] == first.version
    got = {s["first"] for s in extra2["stream"]["shards"].values() if s["count"]}
    assert got <= set(ids_b) and not got & set(ids_a)
    # every interaction of both reads is in the second snapshot exactly once (train or holdout)
    snap2 = PreparedDataset.load(extra2["dataset_dir"])
    pairs = _pairs(snap2, ("train", "valid", "test"))
    for user, items in a + b:
        for item in items:
            assert (user, item) in pairs
    assert _overlap(snap2) == 0

    third = run(env)
    assert third.status == "nothing_new" and "nothing new since" in third.message


def _pairs(data: PreparedDataset, splits) -> set[tuple[str, str]]:
    out = set()
    for s in splits:
        m = getattr(data, s).tocoo()
        out |= {(data.user_ids[u], data.item_ids[i]) for u, i in zip(m.row, m.col, strict=True)}
    return out


def _overlap(data: PreparedDataset) -> int:
    t, v, h = (getattr(data, s).astype(bool) for s in ("train", "valid", "test"))
    return int(t.multiply(v).nnz + t.multiply(h).nnz + v.multiply(h).nnz)


def test_retrain_killed_at_read_train_publish_loses_nothing_and_counts_nothing_twice(env, monkeypatch):
    store = ModelStore(env["root"])
    state = env["root"] / "retrain"
    a = new_traffic(env["tiny"], 10)
    write(env["url"], env["prefix"], a)
    before = [row.version for row in store.list()]
    for point in ("read", "train"):
        monkeypatch.setenv(FAIL_ENV, point)
        with pytest.raises(InjectedFailure):
            run(env, tolerance=1.0)
        assert load_checkpoint(state).positions == {}  # nothing advanced
        assert [row.version for row in store.list()] == before  # nothing published
    monkeypatch.setenv(FAIL_ENV, "publish")
    with pytest.raises(InjectedFailure):
        run(env, tolerance=1.0)
    published = [row.version for row in store.list() if row.version not in before]
    assert len(published) == 1 and load_checkpoint(state).positions == {}  # published, not advanced
    monkeypatch.delenv(FAIL_ENV)

    # interactions written while the rerun runs (after it read) wait for the next retrain
    late = new_traffic(env["tiny"], 4, start=10)
    late_ids: list[str] = []

    def echo(msg: str) -> None:
        if msg.startswith("read ") or msg.startswith("version "):
            late_ids.extend(write(env["url"], env["prefix"], late))

    rerun = run(env, echo=echo)
    assert rerun.status == "advanced" and rerun.version == published[0]  # no second training
    assert store.current() == published[0]  # its gate passed (tolerance 1.0), its promotion completed
    extra = store.manifest(published[0]).extra["retrain"]
    assert extra["stream"]["entries"] == len(a)
    ck = load_checkpoint(state)
    assert ck.positions == {k: s["upper"] for k, s in extra["stream"]["shards"].items()}

    nxt = run(env, tolerance=1.0)
    extra2 = store.manifest(nxt.version).extra["retrain"]
    assert extra2["stream"]["entries"] == len(late) == len(late_ids)
    firsts = {s["first"] for s in extra2["stream"]["shards"].values() if s["count"]}
    assert firsts <= set(late_ids)
    total = extra["stream"]["entries"] + extra2["stream"]["entries"]
    r = redis.Redis.from_url(env["url"])
    in_stream = sum(r.xlen(k) for k in extra["stream"]["shards"])
    assert total == in_stream == len(a) + len(late)
    assert len([row for row in store.list() if row.version not in before]) == 2


def test_retrain_gate_refuses_a_worse_candidate(env):
    store = ModelStore(env["root"])
    served = store.current()
    write(env["url"], env["prefix"], new_traffic(env["tiny"], 30))
    # a candidate wrecked on purpose: weight decay that zeroes its weights in one step, no prior and no
    # item-item term to hide it
    wreck = {"lr": 0.01, "weight_decay": 100.0, "prior_grid": [0.0], "item_item": False}
    res = run(env, train_overrides=wreck)
    gate = res.gate
    assert gate["holdout"] > 0 and gate["served"]["recall@20"] > 0
    assert not gate["passed"] and res.status == "published" and "NOT promoted" in res.message
    assert gate["candidate"]["recall@20"] < gate["served"]["recall@20"] * (1 - gate["tolerance"])
    assert gate["paired"]["users"] > 0 and "holdout users" in gate["reason"]  # how sure, said with it
    assert store.current() == served  # still serving the old version
    assert store.manifest(res.version).extra["retrain"]["gate"]["passed"] is False
    assert load_checkpoint(env["root"] / "retrain").version == res.version  # learned from, not lost
    assert np.isfinite(gate["served"]["recall@20"])


def test_retrain_gate_needs_a_minimum_holdout_unless_forced(env):
    store = ModelStore(env["root"])
    served = store.current()
    write(env["url"], env["prefix"], new_traffic(env["tiny"], 8))
    small = run(env, tolerance=1.0, min_holdout=50)  # any score passes tolerance 1.0: only the size decides
    gate = small.gate
    assert 0 < gate["holdout"] < 50 and gate["too_small"] and not gate["passed"]
    assert small.status == "published" and "holdout too small" in small.message
    assert store.current() == served
    write(env["url"], env["prefix"], new_traffic(env["tiny"], 8, start=8))
    forced = run(env, tolerance=1.0, min_holdout=50, force_promote=True)
    assert not forced.gate["passed"] and forced.status == "promoted" and "--force-promote" in forced.message
    assert store.current() == forced.version
    extra = store.manifest(forced.version).extra["retrain"]
    assert extra["forced"] is True and extra["promote"] is True


def _scrape(url: str) -> dict[str, float]:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("edgerec_retrain_last_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_retrain_prunes_snapshots_and_its_status_reaches_metrics_over_http(env):
    from service_support import ServerThread

    from service.config import Settings
    from service.main import create_app

    store = ModelStore(env["root"])
    snaps = env["root"] / "retrain" / "snapshots"
    settings = Settings(
        home=env["root"].parent / "home", model_store=env["root"], redis_url=env["url"],
        redis_prefix=env["prefix"], stream_shards=SHARDS, model_poll_s=0,
    )  # fmt: skip
    with ServerThread(create_app(settings)) as srv:
        assert _scrape(srv.url) == {}  # no retrain yet: no series (an absence alert fires)

        a = new_traffic(env["tiny"], 10)
        write(env["url"], env["prefix"], a)
        first = run(env, tolerance=1.0, keep_snapshots=1)
        assert first.status == "promoted"
        b = new_traffic(env["tiny"], 8, start=10)
        write(env["url"], env["prefix"], b)
        t0 = time.time()
        refused = run(env, min_holdout=10_000, keep_snapshots=1)  # published, not promoted
        # keep 1, but the served version's snapshot stays beside the next retrain's base
        kept = {p.name for p in snaps.iterdir()}
        assert kept == {
            Path(store.manifest(v).extra["retrain"]["dataset_dir"]).name
            for v in (first.version, refused.version)
        }
        status = json.loads((env["root"] / RETRAIN_STATUS_FILE).read_text())
        assert status["status"] == "published" and status["version"] == refused.version
        assert status["stream"]["interactions"] == interactions(b)
        m = _scrape(srv.url)
        assert m["edgerec_retrain_last_interactions"] == interactions(b)
        assert m["edgerec_retrain_last_gate_promoted"] == 0 and m["edgerec_retrain_last_gate_passed"] == 0
        assert m["edgerec_retrain_last_success"] == 1
        assert t0 <= m["edgerec_retrain_last_timestamp_seconds"] <= time.time()
        assert m["edgerec_retrain_last_new_users"] == len({u for u, _ in b})
        assert m["edgerec_retrain_last_holdout"] == refused.snapshot["holdout"]
        assert m['edgerec_retrain_last_gate_score{model="served"}'] == refused.gate["served"]["recall@20"]
        assert (
            m['edgerec_retrain_last_gate_score{model="candidate"}'] == refused.gate["candidate"]["recall@20"]
        )
        assert m[
            f'edgerec_retrain_last_info{{metric="recall@20",status="published",version="{refused.version}"}}'
        ]

        c = new_traffic(env["tiny"], 6, start=18)
        write(env["url"], env["prefix"], c)
        last = run(env, tolerance=1.0, keep_snapshots=1)
        assert last.status == "promoted"
        assert [p.name for p in snaps.iterdir()] == [
            Path(store.manifest(last.version).extra["retrain"]["dataset_dir"]).name
        ]
        m = _scrape(srv.url)  # the changed file is read again at the next scrape
        assert m["edgerec_retrain_last_interactions"] == interactions(c)
        assert m["edgerec_retrain_last_gate_promoted"] == 1


def test_retrain_snapshot_gives_new_items_their_catalogue_text():
    from training.data.dataset import RawInteractions, prepare
    from training.data.snapshot import Event, merge

    users = [f"u{k}" for k in range(6) for _ in range(3)]
    items = [f"i{(k + j) % 5}" for k in range(6) for j in range(3)]
    raw = RawInteractions(users, items, item_text={f"i{k}": {"title": f"Old {k}"} for k in range(5)})
    base = prepare(raw, "toy", rating_threshold=None, k_core=1)
    events = [Event("u0", "new-a", 0), Event("u1", "new-b", 1), Event("u9", "i1", 2)]
    catalogue = {
        "new-a": {"title": "A lamp", "brand": "Acme", "categories": ["Home", "Light"], "description": None},
        "i1": {"title": "Renamed", "available": True},  # a known item keeps its training text
        "other": {"title": "Not yet chosen by anyone"},
    }
    snap = merge(base, events, catalogue=catalogue)
    text = snap.data.item_text
    idx = snap.data.item_index()
    assert text["title"][idx["new-a"]] == "A lamp" and text["brand"][idx["new-a"]] == "Acme"
    assert text["categories"][idx["new-a"]] == "Home, Light"
    assert text["title"][idx["new-b"]] == "" and text["brand"][idx["i1"]] == ""  # no record; new column
    assert [text["title"][idx[f"i{k}"]] for k in range(5)] == [f"Old {k}" for k in range(5)]
    assert "other" not in idx  # catalogue items without interactions are not in the snapshot
    assert snap.stats["new_items"] == 2 and snap.stats["new_items_with_text"] == 1
    assert merge(base, events).data.item_text.keys() == {"title"}  # no catalogue: as before


def test_retrain_snapshot_selects_on_recent_interactions_once_enough_users_have_one(monkeypatch):
    """valid = the newest new interaction per user after the holdout's (the base's valid joins train), once
    MIN_RECENT_VALID users have one; below that, the base's valid. Every pair stays in exactly one split."""
    from training.data import snapshot
    from training.data.dataset import RawInteractions, prepare
    from training.data.snapshot import Event, merge

    users = [f"u{k}" for k in range(8) for _ in range(4)]
    items = [f"i{(k + j) % 6}" for k in range(8) for j in range(4)]
    base = prepare(RawInteractions(users, items), "toy", rating_threshold=None, k_core=1)
    # each user: three new interactions, in this order (stream order = list order)
    events = [Event(f"u{k}", f"i{(k + 4 + j) % 6}", 3 * k + j) for k in range(8) for j in range(2)]
    events += [Event(f"u{k}", "i-new", 100 + k) for k in range(8)]

    def pairs(m):
        return set(zip(*m.nonzero(), strict=True))

    monkeypatch.setattr(snapshot, "MIN_RECENT_VALID", 5)
    snap = merge(base, events)
    d, idx = snap.data, snap.data.item_index()
    assert snap.stats["valid"] == "recent" and snap.stats["valid_pairs"] == 8
    assert {i for _, i in pairs(d.test)} == {idx["i-new"]}  # the newest per user is the holdout
    u0 = d.user_index()["u0"]
    assert (u0, idx["i5"]) in pairs(d.valid)  # u0's next newest: i5 (order 1) after i4 (order 0)
    assert pairs(base.valid) <= pairs(d.train)  # the day-0 valid is learned from now
    assert not (
        pairs(d.train) & pairs(d.valid) or pairs(d.train) & pairs(d.test) or pairs(d.valid) & pairs(d.test)
    )
    every = pairs(base.train) | pairs(base.valid) | pairs(base.test)
    every |= {(d.user_index()[e.user], idx[e.item]) for e in events}
    assert pairs(d.train) | pairs(d.valid) | pairs(d.test) == every

    monkeypatch.setattr(snapshot, "MIN_RECENT_VALID", 9)  # 8 users: too few, the base's valid stays
    snap = merge(base, events)
    assert snap.stats["valid"] == "base" and pairs(snap.data.valid) == pairs(base.valid)


def test_retrain_gate_says_whether_a_difference_is_beyond_the_holdouts_noise():
    """The gate decides on the means and reports the paired per-user comparison: a same-quality candidate
    reshuffling hits is within the noise, a real drop is beyond it."""
    from edgerec.retrain import gate_decision

    rng = np.random.default_rng(0)
    served_u = (rng.random(300) < 0.3).astype(float)
    moved = rng.choice(300, 120, replace=False)
    noisy = served_u.copy()
    noisy[moved] = served_u[rng.permutation(moved)]  # the same hits, moved between users
    worse = np.where(served_u > 0, (rng.random(300) < 0.6).astype(float), served_u)  # loses 40 % of hits

    def decide(cand_u):
        means = {"recall@20": served_u.mean()}, {"recall@20": cand_u.mean()}
        return gate_decision(*means, 0.02, 300, 100, served_u, cand_u)

    same, drop = decide(noisy), decide(worse)
    assert same["paired"]["users"] == 300 and not same["paired"]["significant"]
    assert "within the noise" in same["reason"]
    assert not drop["passed"] and drop["paired"]["significant"] and "beyond the noise" in drop["reason"]
    assert drop["paired"]["mean_difference"] == pytest.approx(worse.mean() - served_u.mean())
    assert decide(served_u.copy())["passed"]  # identical answers
    unpaired = gate_decision({"recall@20": 0.30}, {"recall@20": 0.29}, 0.02, 300, 100)
    assert not unpaired["passed"] and unpaired["paired"] is None

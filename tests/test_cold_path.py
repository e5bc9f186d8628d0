"""The cold path (issue 17): stored neighbourhoods, the prompt pool, and the warm-up before a swap.

- The export's stored neighbourhoods and hop distances give exactly the prompt and bias the service computes,
  for every user of both tiny versions (one with the candidate prior, one without).
- A cache miss for a train user runs no graph search (the graph's queries are made to fail), and answers
  what the computed path answers.
- Graph work runs in the prompt pool; when it is full the request is a 503 with Retry-After, and the event
  loop keeps answering meanwhile.
- After a swap the users served just before are cache hits under the new version.

Real Redis (the machine's, unique prefix) and real HTTP (uvicorn in a thread) with two tiny trained versions
(``service_support.tiny_store``)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from service_support import ServerThread, delete_prefix, redis_url_or_skip, tiny_store, unique_prefix

from inference.neighbourhoods import NBR_FILE, NBR_META, open_neighbourhoods, unpack_triangle
from inference.version import open_version
from model_store import ModelStore
from service.config import Settings
from service.main import create_app
from service.prompt_pool import PromptPool, PromptPoolFull
from service.swap_warmup import RecentUsers

KEY = "cold-key"
ADMIN = "cold-admin"


@pytest.fixture(scope="module")
def store():
    return tiny_store()


def version_dir(store, n: int):
    return ModelStore(store.root).path(store.versions[n])


def settings_for(store, tmp_path, prefix: str, **over) -> Settings:
    base = dict(
        home=tmp_path,
        model_store=store.root,
        redis_url=redis_url_or_skip(),
        redis_prefix=prefix,
        api_key=KEY,
        admin_api_key=ADMIN,
        model_poll_s=0,
        access_log=False,
    )
    return Settings(**(base | over))


@pytest.fixture
def serve(store, tmp_path):
    """serve(**settings) -> (server, app state); Redis keys removed afterwards."""
    started = []

    def start(**over):
        prefix = unique_prefix()
        app = create_app(settings_for(store, tmp_path, prefix, **over))
        srv = ServerThread(app).__enter__()
        started.append((srv, prefix))
        return srv, app.state.edgerec

    yield start
    for srv, prefix in started:
        srv.__exit__(None, None, None)
        delete_prefix(redis_url_or_skip(), prefix)


def client(srv) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30)


def metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


# ------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("n", [0, 1])
def test_stored_neighbourhoods_give_the_computed_prompt_exactly(store, n):
    """Every user: the stored neighbourhood, nodes and distances equal what the service computes, so the
    prompt (ids, nodes, candidate strengths) and its graph bias are identical, not merely close."""
    v = open_version(version_dir(store, n))
    b, g = v.builder, v.graph
    assert v.neighbourhoods is not None
    for u in range(g.n_users):
        items = g.user_items(u)
        found = v.neighbourhoods.lookup(u, items)
        if items.size == 0:
            assert found is None
            continue
        nbr, distances = found
        computed = b.neighbourhood(u, items)
        assert nbr == computed, u
        want = b.predictive(u, items, computed)  # neighbourhood + bounded BFS, as on a cold miss
        got = b.predictive(u, items, nbr, distances=distances)
        np.testing.assert_array_equal(got.input_ids, want.input_ids)
        np.testing.assert_array_equal(got.node_ids, want.node_ids)
        np.testing.assert_array_equal(got.strength, want.strength)
        np.testing.assert_array_equal(got.bias, want.bias)
        if not b.cfg.bias.enabled:  # no graph bias: nothing to BFS, so no distances are stored
            assert distances is None
            continue
        nodes = np.unique(want.node_ids[want.node_ids >= 0])
        np.testing.assert_array_equal(distances[0], nodes)
        np.testing.assert_array_equal(distances[1], g.hop_distances(nodes, b.cfg.bias.max_hops))


def test_triangle_round_trip():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 7, size=(6, 6)).astype(np.int8)
    a = np.triu(a, 1) + np.triu(a, 1).T
    from inference.neighbourhoods import pack_triangle

    np.testing.assert_array_equal(unpack_triangle(pack_triangle(a), 6), a)
    assert unpack_triangle(np.zeros(0, np.int8), 1).shape == (1, 1)


def test_older_version_without_them_opens_and_a_mismatch_is_ignored(store, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(version_dir(store, 0), old)
    for name in (NBR_FILE, NBR_META):
        (old / name).chmod(0o644)
        (old / name).unlink()
    assert open_version(old).neighbourhoods is None  # a version exported before them still serves
    # stored before a prompt field was added: it takes its saved-file value on both sides, so they match
    legacy = tmp_path / "legacy"
    shutil.copytree(version_dir(store, 0), legacy)
    for name in (NBR_META, "prompt_config.json"):
        (legacy / name).chmod(0o644)
        doc = json.loads((legacy / name).read_text())
        cfg = doc["prompt_config"] if name == NBR_META else doc
        del cfg["strength_without_bias"]
        (legacy / name).write_text(json.dumps(doc))
    assert open_version(legacy).neighbourhoods is not None
    v = open_version(version_dir(store, 0))
    v.builder.cfg.n_two_hop_items += 1  # other prompt settings than the stored ones were computed with
    assert open_neighbourhoods(version_dir(store, 0), v.builder) is None


# ------------------------------------------------------------------------------------------ service
def _refuse(*_a, **_k):
    raise AssertionError("graph search on a cache miss of a train user")


def test_train_user_miss_runs_no_graph_search_and_answers_as_computed(serve, store, monkeypatch):
    srv, state = serve()
    model = state.holder.current
    users = store.user_ids[:12]
    with client(srv) as http:
        monkeypatch.setattr(model.builder, "neighbourhood", _refuse)
        monkeypatch.setattr(model.graph, "hop_distances_many", _refuse)
        stored = [http.post(f"/recommend/{u}", json={"k": 10}) for u in users]
        assert all(r.status_code == 200 for r in stored), [r.text for r in stored]
        monkeypatch.undo()
        # the same users through the computed path (no stored neighbourhoods, a fresh cache)
        delete_prefix(redis_url_or_skip(), state.settings.redis_prefix)
        model.neighbourhoods = None
        computed = [http.post(f"/recommend/{u}", json={"k": 10}) for u in users]
    for a, b in zip(stored, computed, strict=True):
        assert [i["id"] for i in a.json()["items"]] == [i["id"] for i in b.json()["items"]]
        np.testing.assert_allclose(
            [i["score"] for i in a.json()["items"]], [i["score"] for i in b.json()["items"]], rtol=1e-6
        )


def test_live_history_is_built_off_the_loop_and_a_full_pool_is_a_503(serve, store):
    """One prompt worker, no queue: while a (slowed) graph query runs, the loop still answers /healthz at
    once, a second request needing graph work is refused with 503 + Retry-After, and a train user with no
    live items is still answered from the stored neighbourhood."""
    srv, state = serve(prompt_workers=1, prompt_queue=0)
    model = state.holder.current
    started, release = threading.Event(), threading.Event()
    real = model.builder.neighbourhood

    def slow(*a, **k):
        started.set()
        release.wait(10)
        return real(*a, **k)

    model.builder.neighbourhood = slow
    items = store.item_ids[:3]
    with client(srv) as http, ThreadPoolExecutor(2) as pool:
        first = pool.submit(http.post, "/recommend/cold-user-1", json={"k": 5, "recent_items": items})
        assert started.wait(10)
        t = time.perf_counter()
        assert http.get("/healthz").status_code == 200
        assert time.perf_counter() - t < 1.0  # the loop is free while the graph work runs
        refused = http.post("/recommend/cold-user-2", json={"k": 5, "recent_items": items})
        known = http.post(f"/recommend/{store.user_ids[3]}", json={"k": 5})
        release.set()
        ok = first.result(timeout=30)
        rejected = metric(http, "edgerec_prompt_pool_rejected_total")
    assert ok.status_code == 200 and ok.json()["fallback"] == "cold_start_context"
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "retry later" in refused.json()["detail"] and refused.json()["request_id"]
    assert known.status_code == 200
    assert rejected == 1


def test_swap_warms_the_recent_users_for_the_new_version(serve, store):
    srv, state = serve(model_version=store.versions[0])
    users = store.user_ids[:10]
    with client(srv) as http:
        for u in users:
            assert http.post(f"/recommend/{u}", json={"k": 5}).status_code == 200
        r = http.post("/admin/reload", json={"version": store.versions[1]}, headers={"X-API-Key": ADMIN})
        assert r.status_code == 200 and r.json()["version"] == store.versions[1]
        assert metric(http, "edgerec_swap_warmed_users") == len(users)
        hits = metric(http, 'edgerec_cache_lookups_total{result="hit"}')
        misses = metric(http, 'edgerec_cache_lookups_total{result="miss"}')
        for u in users:
            body = http.post(f"/recommend/{u}", json={"k": 5}).json()
            assert body["model_version"] == store.versions[1]
        # every one of them a hit under the new version, answered from its cached user vector
        assert metric(http, 'edgerec_cache_lookups_total{result="hit"}') - hits == len(users)
        assert metric(http, 'edgerec_cache_lookups_total{result="miss"}') == misses


def test_swap_warmup_is_bounded_in_time(serve, store):
    srv, state = serve(model_version=store.versions[0], swap_warm_s=0.001)
    with client(srv) as http:
        for u in store.user_ids[:40]:
            http.post(f"/recommend/{u}", json={"k": 5})
        t = time.perf_counter()
        r = http.post("/admin/reload", json={"version": store.versions[1]}, headers={"X-API-Key": ADMIN})
        assert r.status_code == 200
        assert metric(http, "edgerec_swap_warmed_users") < 40
        assert metric(http, "edgerec_swap_warm_seconds") < 0.5
    assert time.perf_counter() - t < 30


# ------------------------------------------------------------------------------------------ units
def test_recent_users_keeps_the_newest_within_the_window_most_frequent_first():
    r = RecentUsers(3)
    for t, u in enumerate(["a", "b", "c", "a", "d", "c", "c"]):
        r.touch(u, now=float(t))
    assert len(r) == 3
    assert r.active(10.0, now=6.0) == ["c", "a", "d"]  # "c" 3 requests, "a" 2; "b" fell out of the LRU
    assert r.active(1.5, now=6.0) == ["c"]  # only "c" was seen in the last 1.5 s
    assert r.active(2.5, now=6.0) == ["c", "d"]  # equal counts: the more recent first
    off = RecentUsers(0)
    off.touch("x")
    assert len(off) == 0


def test_prompt_pool_refuses_past_its_limit():
    async def main():
        pool = PromptPool(workers=1, queue=1)
        gate = threading.Event()
        jobs = [asyncio.create_task(pool.run(gate.wait, 5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(PromptPoolFull):
            await pool.run(lambda: 1)
        gate.set()
        assert await asyncio.gather(*jobs) == [True, True]
        assert await pool.run(lambda: 7) == 7 and pool.jobs == 0
        pool.close()

    asyncio.run(main())

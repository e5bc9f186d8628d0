"""The service on a real 3-master Redis Cluster (started here from the redis-server binary): writes are one
atomic script per slot and exactly once, reads pipeline on one slot, the stream shards spread over the nodes,
and a node outage degrades answers and refuses writes honestly until the node is back."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from redis_procs import RedisClusterProcs
from service_support import ServerThread, tiny_store, unique_prefix

from service.cache import Cache, Keys, WriteNotStored, WriteOutcomeUnknown
from service.config import Settings
from service.main import create_app
from service.redis_conn import make_client

VERSION = "v20260101-120000-000-0123abcd"
KEY = "cluster-key"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_redis_cluster_idempotent_writes_and_one_slot_reads(redis_cluster):
    prefix = unique_prefix()

    async def go():
        cache = Cache(make_client(redis_cluster.url, 0.5), prefix, history_max=3)
        first = await cache.append_interactions("u1", ["i1", "i2"], [1.0, 2.0], VERSION, "k1")
        again = await cache.append_interactions("u1", ["i1", "i2"], [1.0, 2.0], VERSION, "k1")
        copies = await asyncio.gather(
            *(cache.append_interactions("u1", ["i3"], None, VERSION, "k2") for _ in range(10))
        )
        look = await cache.lookup(VERSION, "u1")  # GET + LRANGE pipelined on the user's slot
        await cache.append_interactions("u1", ["i4", "i5"], None, VERSION)
        hist = await cache.history("u1")
        await cache.client.aclose()
        return first, again, copies, look, hist

    first, again, copies, look, hist = asyncio.run(go())
    assert again.replayed and again.stream_id == first.stream_id
    assert sum(not c.replayed for c in copies) == 1 and len({c.stream_id for c in copies}) == 1
    assert look.history == ["i1", "i2", "i3"] and hist == ["i3", "i4", "i5"]  # capped at 3
    r = redis_cluster.client()
    keys = Keys(prefix)
    entries = r.xrange(keys.stream("u1"))
    assert [e[1][b"idempotency_key"] for e in entries[:2]] == [b"k1", b"k2"] and len(entries) == 3
    assert sum(r.xlen(k) for k in keys.stream_keys()) == 3  # nothing in any other shard
    # the shards are spread over the masters, so writes do not all land on one node
    assert len({r.get_node_from_key(k).port for k in keys.stream_keys()}) == len(redis_cluster.nodes)


def test_redis_cluster_paused_node_gives_unknown_then_a_safe_retry(redis_cluster):
    prefix = unique_prefix()
    node = redis_cluster.node_of(Keys(prefix).stream("u7"))

    async def go():
        cache = Cache(make_client(redis_cluster.url, 0.2), prefix, backoff_max_s=0.2)
        await cache.history("u7")  # warm: a pooled connection to the user's node, so the write is sent
        node.pause()
        try:
            with pytest.raises(WriteOutcomeUnknown):
                await cache.append_interactions("u7", ["i1"], None, VERSION, "p1")
            await asyncio.sleep(0.3)  # well under the cluster's node timeout: no failover
        finally:
            node.resume()
        deadline = time.monotonic() + 15
        while True:
            try:
                result = await cache.append_interactions("u7", ["i1"], None, VERSION, "p1")
                break
            except (WriteOutcomeUnknown, WriteNotStored):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await cache.client.aclose()
        return result

    result = asyncio.run(go())
    entries = redis_cluster.client().xrange(Keys(prefix).stream("u7"))
    assert len(entries) == 1 and result.replayed and result.stream_id == entries[0][0].decode()


@pytest.fixture(scope="module")
def store():
    return tiny_store()


def _settings(store, home, url, prefix, **over) -> Settings:
    base = dict(home=home, model_store=store.root, api_key=KEY, model_poll_s=0, access_log=False)
    return Settings(**base, redis_url=url, redis_prefix=prefix, **over)


def test_redis_cluster_http_interactions_and_recommendations(redis_cluster, store, tmp_path):
    settings = _settings(store, tmp_path, redis_cluster.url, unique_prefix())
    user = store.user_ids[5]
    with (
        ServerThread(create_app(settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as c,
    ):
        assert c.get("/readyz").json()["cache"] == "ok"
        before = [it["id"] for it in c.post(f"/recommend/{user}", json={"k": 5}).json()["items"]]
        c.post(f"/recommend/{user}", json={"k": 5})  # a cache hit, read on the cluster
        body = {"items": before[:2], "timestamps": [10.0, 11.0]}
        r = c.post(f"/users/{user}/interactions", json=body, headers={"Idempotency-Key": "h1"})
        assert r.status_code == 201 and r.json()["replayed"] is False and r.headers["Idempotency-Key"] == "h1"
        again = c.post(f"/users/{user}/interactions", json=body, headers={"Idempotency-Key": "h1"})
        assert again.status_code == 201 and again.json()["replayed"] is True
        assert again.json()["stream_id"] == r.json()["stream_id"]
        after = c.post(f"/recommend/{user}", json={"k": 5}).json()
        assert after["fallback"] is None and not {it["id"] for it in after["items"]} & set(before[:2])
    entries = redis_cluster.client().xrange(Keys(settings.redis_prefix).stream(user))
    assert len(entries) == 1


def test_redis_cluster_node_outage_and_recovery(redis_cluster, store, tmp_path):
    """Runs last of the cluster tests: it kills a master and brings it back."""
    prefix = unique_prefix()
    settings = _settings(store, tmp_path, redis_cluster.url, prefix, redis_timeout_s=0.3, retry_after_s=1)
    user = store.user_ids[6]
    node = redis_cluster.node_of(Keys(prefix).stream(user))
    with (
        ServerThread(create_app(settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as c,
    ):
        first = [it["id"] for it in c.post(f"/recommend/{user}", json={"k": 5}).json()["items"]]
        node.kill()
        try:
            rec = c.post(f"/recommend/{user}", json={"k": 5})
            assert rec.status_code == 200 and rec.json()["fallback"] == "cache_unavailable"
            down = c.post(f"/users/{user}/interactions", json={"items": first[:1]})
            assert down.status_code == 503 and down.headers["Retry-After"] == "1"
            assert down.json()["detail"]["stored"] in (False, "unknown")
            key = down.headers["Idempotency-Key"]
        finally:
            node.start()  # same folder: nodes.conf and the AOF bring it back as the same master
            redis_cluster.wait_ok()
        deadline = time.monotonic() + 30
        while True:  # retry as told, with the key the 503 named
            r = c.post(
                f"/users/{user}/interactions", json={"items": first[:1]}, headers={"Idempotency-Key": key}
            )
            if r.status_code == 201:
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.3)
        back = c.post(f"/recommend/{user}", json={"k": 5}).json()
        assert back["fallback"] is None and first[0] not in {it["id"] for it in back["items"]}
    assert len(redis_cluster.client().xrange(Keys(prefix).stream(user))) == 1

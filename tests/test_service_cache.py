"""Cache keys, live history, interaction stream and the Redis breaker, against a real Redis."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis
from redis.crc import key_slot
from redis_procs import RedisProc
from service_support import delete_prefix, free_port, redis_url_or_skip, unique_prefix

from service.cache import Cache, Keys, RedisUnavailable, user_tag
from service.cache_entry import Entry, history_fingerprint
from service.redis_conn import make_client

VERSION = "v20260101-120000-000-0123abcd"


@pytest.fixture
def url():
    return redis_url_or_skip()


@pytest.fixture
def prefix(url):
    p = unique_prefix()
    yield p
    delete_prefix(url, p)


def run(coro):
    return asyncio.run(coro)


def test_keys_use_hash_tags_and_never_raw_ids():
    keys = Keys("edgerec")
    nbr, hist = keys.nbr(VERSION, "A1YJEY40YUW4SE"), keys.history("A1YJEY40YUW4SE")
    assert "A1YJEY40YUW4SE" not in nbr and "A1YJEY40YUW4SE" not in hist
    assert nbr.startswith(f"edgerec:{VERSION}:nbr:{{s") and hist.startswith("edgerec:hist:{s")
    # One user's keys share a Redis Cluster slot, so the lookup pipeline works on a cluster too.
    assert key_slot(nbr.encode()) == key_slot(hist.encode())
    # ... and the slot of the user's stream shard, so a write is one script on one slot.
    assert key_slot(keys.stream("A1YJEY40YUW4SE").encode()) == key_slot(hist.encode())
    assert keys.stream("A1YJEY40YUW4SE") in keys.stream_keys() and len(set(keys.stream_keys())) == keys.shards
    assert keys.nbr(VERSION, "u1") != keys.nbr(VERSION, "u2")
    assert keys.nbr(VERSION, "u1") != keys.nbr("v20260101-120000-000-ffffffff", "u1")


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "u{1}", "ü", "a\nb", "a/b"])
def test_invalid_user_ids_are_rejected(bad):
    with pytest.raises(ValueError, match="invalid user id"):
        user_tag(bad)


def test_interactions_update_history_stream_and_invalidate(url, prefix):
    async def go():
        client = make_client(url, 0.5)
        cache = Cache(client, prefix, history_max=5)
        packed = Entry(vector=np.ones(4, np.float32)).pack(history_fingerprint([]))
        await cache.store_entry(VERSION, "u1", packed)
        first = await cache.lookup(VERSION, "u1")
        assert first.entry == packed and first.history == []

        entry = (await cache.append_interactions("u1", ["i1", "i2"], [1.0, 2.0], VERSION)).stream_id
        after = await cache.lookup(VERSION, "u1")
        assert after.entry is None  # invalidated
        assert after.history == ["i1", "i2"]
        await cache.append_interactions("u1", ["i3", "i4", "i5", "i6"], None, VERSION)
        assert await cache.history("u1") == ["i2", "i3", "i4", "i5", "i6"]  # capped, newest kept
        await client.aclose()
        return entry

    entry = run(go())
    r = redis.Redis.from_url(url)
    stream = r.xrange(Keys(prefix).stream("u1"))
    assert stream[0][0].decode() == entry
    assert stream[0][1][b"user"] == b"u1" and stream[0][1][b"items"] == b'["i1","i2"]'
    assert stream[0][1][b"ts"] == b"[1.0,2.0]"
    assert stream[0][1][b"idempotency_key"].startswith(b"derived-")
    assert len(stream) == 2


def test_stale_entry_with_other_history_is_a_miss(url, prefix):
    """Even without the DEL (e.g. an entry written by another version's replica), a neighbourhood built from a
    different history is never served."""

    async def go():
        client = make_client(url, 0.5)
        cache = Cache(client, prefix)
        await cache.append_interactions("u2", ["i1"], None, VERSION)
        await cache.store_entry(VERSION, "u2", Entry().pack(history_fingerprint([])))  # built before i1
        assert (await cache.lookup(VERSION, "u2")).entry is None
        look = await cache.lookup(VERSION, "u2")
        built_with_i1 = Entry().pack(look.fingerprint)
        await cache.store_entry(VERSION, "u2", built_with_i1)
        assert (await cache.lookup(VERSION, "u2")).entry == built_with_i1
        ttl = await client.ttl(cache.keys.nbr(VERSION, "u2"))
        await client.aclose()
        return ttl

    assert 0 < run(go()) <= 3600


def test_breaker_fails_fast_then_probes_again():
    port = free_port()  # nothing listens here

    async def go():
        cache = Cache(make_client(f"redis://127.0.0.1:{port}/0", 0.2), "p", backoff_max_s=0.3)
        t = time.perf_counter()
        with pytest.raises(RedisUnavailable):
            await cache.lookup(VERSION, "u1")
        with pytest.raises(RedisUnavailable, match="skipped"):
            await cache.lookup(VERSION, "u1")  # inside the back-off window: no network call
        assert time.perf_counter() - t < 5
        await asyncio.sleep(0.35)
        with pytest.raises(RedisUnavailable) as exc:
            await cache.lookup(VERSION, "u1")
        assert "skipped" not in str(exc.value)  # the window passed: it really tried again
        assert not await cache.ping()

    run(go())


def test_recovers_without_new_client_after_redis_restart(tmp_path):
    server = RedisProc(tmp_path / "redis").start()
    try:

        async def go():
            cache = Cache(make_client(server.url, 0.2), "p", backoff_max_s=0.2)
            await cache.append_interactions("u1", ["i1"], None, VERSION)
            server.stop()
            with pytest.raises(RedisUnavailable):
                await cache.append_interactions("u1", ["i2"], None, VERSION)
            server.start()  # same data dir: AOF brings the acknowledged write back
            deadline = time.monotonic() + 10
            while True:
                try:
                    await cache.append_interactions("u1", ["i3"], None, VERSION)
                    break
                except RedisUnavailable:
                    assert time.monotonic() < deadline, "cache did not recover"
                    await asyncio.sleep(0.1)
            return await cache.history("u1")

        assert run(go()) == ["i1", "i3"]
    finally:
        server.stop()

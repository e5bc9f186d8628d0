"""Exactly-once interaction writes at the cache level, against a real redis-server of the test's own (one it
can pause and kill): a key is stored once however often it is sent, and a failure says honestly whether the
write happened."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis_procs import RedisProc

from service.cache import Cache, Keys, WriteNotStored, WriteOutcomeUnknown
from service.idempotency import IdempotencyConflict
from service.redis_conn import make_client

VERSION = "v20260101-120000-000-0123abcd"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    rs = RedisProc(tmp_path_factory.mktemp("redis")).start()
    yield rs
    rs.stop()


def stored(url: str, prefix: str, user: str) -> tuple[list, list[bytes]]:
    r = redis.Redis.from_url(url)
    keys = Keys(prefix)
    return r.xrange(keys.stream(user)), r.lrange(keys.history(user), 0, -1)


def test_a_key_is_stored_once_and_a_repeat_gets_the_first_answer(server):
    async def go():
        cache = Cache(make_client(server.url, 0.5), "idem1", idempotency_ttl_s=600)
        first = await cache.append_interactions("u1", ["i1", "i2"], [1.0, 2.0], VERSION, "key-1")
        again = await cache.append_interactions("u1", ["i1", "i2"], [1.0, 2.0], VERSION, "key-1")
        assert not first.replayed and again.replayed and again.stream_id == first.stream_id
        with pytest.raises(IdempotencyConflict):  # the same key for other items is a client error
            await cache.append_interactions("u1", ["i3"], None, VERSION, "key-1")
        other_user = await cache.append_interactions("u2", ["i1", "i2"], [1.0, 2.0], VERSION, "key-1")
        assert not other_user.replayed  # keys are per user
        # no key: derived from the request, so an identical request is the same write ...
        derived = await cache.append_interactions("u1", ["i9"], [5.0], VERSION)
        repeat = await cache.append_interactions("u1", ["i9"], [5.0], VERSION)
        assert repeat.replayed and repeat.idempotency_key == derived.idempotency_key
        # ... and the echoed derived key works as a header key for a retry
        retry = await cache.append_interactions("u1", ["i9"], [5.0], VERSION, derived.idempotency_key)
        assert retry.replayed and retry.stream_id == derived.stream_id
        later = await cache.append_interactions("u1", ["i9"], [6.0], VERSION)  # another time: a new write
        assert not later.replayed
        record_ttl = await cache.client.ttl(cache.keys.idempotency("u1", _record("u1", "key-1")))
        await cache.client.aclose()
        return first.stream_id, record_ttl

    first_id, record_ttl = asyncio.run(go())
    entries, history = stored(server.url, "idem1", "u1")
    assert [e[0].decode() for e in entries][0] == first_id
    assert len(entries) == 3 and history == [b"i1", b"i2", b"i9", b"i9"]
    assert entries[0][1][b"idempotency_key"] == b"key-1"
    assert 0 < record_ttl <= 600


def _record(user: str, key: str) -> str:
    from service.idempotency import record_id

    return record_id(user, key)


def test_concurrent_copies_of_a_write_store_it_once(server):
    async def go():
        cache = Cache(make_client(server.url, 0.5), "idem2")
        results = await asyncio.gather(
            *(cache.append_interactions("u1", ["i1"], None, VERSION, "same") for _ in range(20))
        )
        await cache.client.aclose()
        return results

    results = asyncio.run(go())
    assert sum(not r.replayed for r in results) == 1
    assert len({r.stream_id for r in results}) == 1
    entries, history = stored(server.url, "idem2", "u1")
    assert len(entries) == 1 and history == [b"i1"]


def test_a_write_sent_to_a_paused_redis_is_unknown_and_a_retry_is_safe(server):
    """The issue's double write: a write times out while Redis is paused, then runs when it resumes. The
    service must not call that "not stored", must not re-send it by itself, and a retry must not store it
    twice."""

    async def go():
        cache = Cache(make_client(server.url, 0.2), "idem3", backoff_max_s=0.2)
        assert await cache.ping()  # a warm pooled connection, as under traffic: the write is really sent
        server.pause()
        try:
            with pytest.raises(WriteOutcomeUnknown) as exc:
                await cache.append_interactions("u1", ["i1"], None, VERSION, "paused-1")
            assert exc.value.idempotency_key == "paused-1"
            await asyncio.sleep(0.3)
        finally:
            server.resume()
        deadline = time.monotonic() + 10
        while True:  # the client retries as told, with the same key
            try:
                return await cache.append_interactions("u1", ["i1"], None, VERSION, "paused-1")
            except (WriteOutcomeUnknown, WriteNotStored):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)

    retry = asyncio.run(go())
    entries, history = stored(server.url, "idem3", "u1")
    assert len(entries) == 1 and history == [b"i1"]  # the paused copy ran once; the retry stored nothing
    assert retry.replayed and retry.stream_id == entries[0][0].decode()


def test_refused_connection_and_open_breaker_are_not_stored(tmp_path):
    rs = RedisProc(tmp_path / "redis").start()
    url = rs.url
    rs.kill()

    async def go():
        cache = Cache(make_client(url, 0.2), "idem4", backoff_max_s=5)
        with pytest.raises(WriteNotStored) as refused:
            await cache.append_interactions("u1", ["i1"], None, VERSION, "k")
        with pytest.raises(WriteNotStored, match="skipped"):  # the breaker is open: nothing was sent
            await cache.append_interactions("u1", ["i1"], None, VERSION, "k")
        await cache.client.aclose()
        return refused.value

    err = asyncio.run(go())
    assert err.idempotency_key == "k" and "connecting" in str(err)

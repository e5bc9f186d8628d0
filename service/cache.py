"""Redis-side state of the service: the neighbourhood cache, users' live histories and the interaction stream.

Keys. ``{s<k>}`` is a Redis Cluster hash tag: the user's shard, one of ``stream_shards`` (a user's keys and
their shard's stream share one slot, so a write is one atomic script and a lookup one pipeline, on a cluster
too, while the shards spread writes over the nodes):

- ``{prefix}:{version}:nbr:{s<k>}:<tag>``  the user's neighbourhood entry under that model version (TTL)
- ``{prefix}:hist:{s<k>}:<tag>``           list of the user's live item ids (raw ids, newest last, capped)
- ``{prefix}:idem:{s<k>}:<hash>``          idempotency record of one write: fingerprint + stream id (TTL)
- ``{prefix}:interactions:{s<k>}``         stream shard k: every accepted interaction of its users (the
  durable record; ``Keys.stream_keys()`` lists all shards for a reader)

``<tag>`` is a blake2b hash of the validated user id: ids are never concatenated raw into keys, so no id can
reach another user's keys or break the slot layout. The shard is a function of that hash and the shard count,
so the count is fixed for a deployment's data (changing it moves users to other shards).

A cached neighbourhood carries a fingerprint of the history it was built from; a lookup that reads a different
history treats it as a miss, so a stale entry can never answer (even for a version swapped back in later), and
the DEL on write is only a memory saving.

All calls go through a small circuit breaker: after a failure Redis is skipped for a back-off window (doubling
up to a cap) so that a dead Redis costs requests nothing, then the next call probes it again."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.cache_entry import history_fingerprint, is_current
from service.idempotency import (
    WRITE_SCRIPT,
    WriteResult,
    certainly_not_sent,
    derive_key,
    parse_record,
    record_id,
    request_fingerprint,
)

log = logging.getLogger("edgerec.cache")

T = TypeVar("T")

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
USER_ID_RULE = "1-128 characters from A-Z a-z 0-9 _ . : @ -"
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
DEFAULT_STREAM_SHARDS = 16  # restored after a concurrent edit; the write-path owner sets the final value


class RedisUnavailable(Exception):
    """Redis could not be used for this call (down, timed out, or skipped while backing off)."""


class WriteFailed(RedisUnavailable):
    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message)
        self.idempotency_key = idempotency_key


class WriteNotStored(WriteFailed):
    """The write certainly did not happen (no connection, breaker open, or Redis refused it)."""


class WriteOutcomeUnknown(WriteFailed):
    """The write was sent but no answer came: it may or may not be stored; retry with the same key."""


def valid_user_id(user_id: str) -> bool:
    return bool(USER_ID_RE.match(user_id))


def user_tag(user_id: str) -> str:
    if not valid_user_id(user_id):
        raise ValueError(f"invalid user id: must be {USER_ID_RULE}")
    return hashlib.blake2b(user_id.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class Keys:
    prefix: str
    shards: int = DEFAULT_STREAM_SHARDS

    def shard(self, user_id: str) -> int:
        return int(user_tag(user_id)[:8], 16) % self.shards

    def _user(self, user_id: str) -> str:
        tag = user_tag(user_id)
        return f"{{s{int(tag[:8], 16) % self.shards}}}:{tag}"

    def nbr(self, version: str, user_id: str) -> str:
        v = (
            version
            if _VERSION_RE.match(version)
            else hashlib.blake2b(version.encode(), digest_size=8).hexdigest()
        )
        return f"{self.prefix}:{v}:nbr:{self._user(user_id)}"

    def history(self, user_id: str) -> str:
        return f"{self.prefix}:hist:{self._user(user_id)}"

    def idempotency(self, user_id: str, record: str) -> str:
        return f"{self.prefix}:idem:{{s{self.shard(user_id)}}}:{record}"

    def stream(self, user_id: str) -> str:
        """The stream shard that holds this user's interactions."""
        return self.stream_shard(self.shard(user_id))

    def stream_shard(self, k: int) -> str:
        return f"{self.prefix}:interactions:{{s{k}}}"

    def stream_keys(self) -> list[str]:
        """Every stream shard: what a consumer of the interaction stream reads (e.g. with XREAD)."""
        return [self.stream_shard(k) for k in range(self.shards)]


def stream_keys(prefix: str, shards: int = DEFAULT_STREAM_SHARDS) -> list[str]:
    """The interaction stream's shard keys for a deployment's EDGEREC_REDIS_PREFIX and _STREAM_SHARDS."""
    return Keys(prefix, shards).stream_keys()


class Breaker:
    """Skip Redis for a growing window after failures; the first call after the window probes it."""

    def __init__(self, base_s: float = 0.2, cap_s: float = 5.0) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self.failures = 0
        self.open_until = 0.0

    def allow(self) -> bool:
        return time.monotonic() >= self.open_until

    def retry_in(self) -> float:
        return max(0.0, self.open_until - time.monotonic())

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def failure(self) -> None:
        self.failures += 1
        self.open_until = time.monotonic() + min(self.cap_s, self.base_s * 2 ** (self.failures - 1))


@dataclass
class Lookup:
    entry: bytes | None  # the packed cache entry (service.cache_entry) when a current one exists
    history: list[str]  # the user's live item ids, oldest first
    fingerprint: bytes  # of that history, to store alongside a freshly computed neighbourhood


class Cache:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        ttl_s: int = 3600,
        history_max: int = 200,
        stream_maxlen: int = 1_000_000,
        timeout_s: float = 0.25,
        backoff_max_s: float = 5.0,
        on_state: Callable[[bool], None] | None = None,
        stream_shards: int = DEFAULT_STREAM_SHARDS,
        idempotency_ttl_s: int = 86_400,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix, stream_shards)
        self.idempotency_ttl_s = idempotency_ttl_s
        self._write = client.register_script(WRITE_SCRIPT)  # EVALSHA, loading the script on NOSCRIPT
        self.ttl_s = ttl_s
        self.history_max = history_max
        self.stream_maxlen = stream_maxlen
        # Whole-call guard on top of the socket timeouts (a pipeline is several socket reads). Generous, as it
        # also counts the event loop's own lag under overload, which is not a Redis failure.
        self.call_timeout_s = timeout_s * 4
        self.breaker = Breaker(base_s=min(0.2, backoff_max_s), cap_s=backoff_max_s)
        self._on_state = on_state

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            raise RedisUnavailable(f"redis skipped for {self.breaker.retry_in():.2f}s after errors")
        try:
            async with asyncio.timeout(self.call_timeout_s):
                result = await make()
        except (RedisError, OSError, TimeoutError) as exc:
            first = self.breaker.failures == 0
            self.breaker.failure()
            if self._on_state:
                self._on_state(False)
            if first:
                log.warning("redis unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if self.breaker.failures:
            log.info("redis available again")
        self.breaker.success()
        if self._on_state:
            self._on_state(True)
        return result

    # -- reads -----------------------------------------------------------------------------------------------

    async def lookup(self, version: str, user_id: str) -> Lookup:
        """One round trip: the cached neighbourhood and the live history, pipelined (same hash slot)."""
        nbr_key, hist_key = self.keys.nbr(version, user_id), self.keys.history(user_id)

        async def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(nbr_key)
            pipe.lrange(hist_key, -self.history_max, -1)
            return await pipe.execute()

        raw, hist = await self._call(run)
        fp = history_fingerprint(hist)
        entry = bytes(raw) if is_current(raw, fp) else None
        return Lookup(entry=entry, history=[h.decode() for h in hist], fingerprint=fp)

    async def history(self, user_id: str) -> list[str]:
        hist = await self._call(lambda: self.client.lrange(self.keys.history(user_id), -self.history_max, -1))
        return [h.decode() for h in hist]

    async def try_lock(self, name: str, ttl_s: int) -> bool:
        """SET NX with a TTL under ``{prefix}:lock:{name}``: True for the one caller that got it."""
        key = f"{self.keys.prefix}:lock:{name}"
        return bool(await self._call(lambda: self.client.set(key, b"1", nx=True, ex=ttl_s)))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self.client.ping))
        except RedisUnavailable:
            return False

    # -- writes ----------------------------------------------------------------------------------------------

    async def store_entry(self, version: str, user_id: str, packed: bytes) -> bool:
        """Store a packed cache entry (it carries its history fingerprint). Best effort: a failure only
        costs a recomputation later."""
        try:
            await self._call(lambda: self.client.set(self.keys.nbr(version, user_id), packed, ex=self.ttl_s))
            return True
        except RedisUnavailable:
            return False

    async def append_interactions(
        self,
        user_id: str,
        items: Sequence[str],
        timestamps: Sequence[float] | None,
        version: str,
        idempotency_key: str | None = None,
    ) -> WriteResult:
        """Store interactions exactly once per idempotency key (derived from the request when None).

        One script on the user's slot: the stream entry, the capped history append, the cache invalidation and
        the idempotency record happen all together or not at all, and a second copy of the same write is a
        no-op that returns the first one's stream id. Raises ``WriteNotStored`` when it certainly did not
        run, ``WriteOutcomeUnknown`` when it may have (retry with the same key), ``IdempotencyConflict`` when
        the key was used for another request.
        """
        key = idempotency_key or derive_key(user_id, items, timestamps)
        fingerprint = request_fingerprint(items, timestamps)
        fields = {
            "user": user_id,
            "items": orjson.dumps(list(items)),
            "ts": orjson.dumps(list(timestamps) if timestamps is not None else None),
            "received": f"{time.time():.3f}",
            "model_version": version,
            "idempotency_key": key,
        }
        keys = [
            self.keys.idempotency(user_id, record_id(user_id, key)),
            self.keys.stream(user_id),
            self.keys.history(user_id),
            self.keys.nbr(version, user_id),
        ]
        args: list[str | bytes | int] = [
            fingerprint,
            self.idempotency_ttl_s,
            self.stream_maxlen,
            self.history_max,
            len(items),
            *items,
        ]
        for name, value in fields.items():
            args += [name, value]
        try:
            stored, record = await self._call(lambda: self._write(keys=keys, args=args))
        except RedisUnavailable as exc:
            cause = exc.__cause__
            if cause is None or certainly_not_sent(cause):
                raise WriteNotStored(str(exc), key) from cause
            raise WriteOutcomeUnknown(str(exc), key) from cause
        return WriteResult(parse_record(record, fingerprint), key, replayed=not stored)

"""Redis-side state of the service: the neighbourhood cache, users' live histories and the interaction stream.

Keys (``{tag}`` is a Redis Cluster hash tag, so one user's keys share a slot and can be pipelined together):

- ``{prefix}:{version}:nbr:{<tag>}``  the user's neighbourhood entry under that model version (TTL)
- ``{prefix}:hist:{<tag>}``           list of the user's live item ids (raw ids, newest last, capped)
- ``{prefix}:interactions``           stream of every accepted interaction (the durable record)

``<tag>`` is a blake2b hash of the validated user id: ids are never concatenated raw into keys, so no id can
reach another user's keys or break the slot layout. A cached neighbourhood carries a fingerprint of the
history it was built from; a lookup that reads a different history treats it as a miss, so a stale entry can
never answer (even for a version swapped back in later), and the DEL on write is only a memory saving.

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

log = logging.getLogger("edgerec.cache")

T = TypeVar("T")

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
USER_ID_RULE = "1-128 characters from A-Z a-z 0-9 _ . : @ -"
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_MAGIC = b"ER1"  # layout version of a cached value: magic, 8-byte history fingerprint, packed neighbourhood


class RedisUnavailable(Exception):
    """Redis could not be used for this call (down, timed out, or skipped while backing off)."""


def valid_user_id(user_id: str) -> bool:
    return bool(USER_ID_RE.match(user_id))


def user_tag(user_id: str) -> str:
    if not valid_user_id(user_id):
        raise ValueError(f"invalid user id: must be {USER_ID_RULE}")
    return hashlib.blake2b(user_id.encode(), digest_size=12).hexdigest()


def history_fingerprint(history: Sequence[bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=8)
    for item in history:
        h.update(item)
        h.update(b"\x00")
    return h.digest()


@dataclass(frozen=True)
class Keys:
    prefix: str

    def nbr(self, version: str, user_id: str) -> str:
        v = (
            version
            if _VERSION_RE.match(version)
            else hashlib.blake2b(version.encode(), digest_size=8).hexdigest()
        )
        return f"{self.prefix}:{v}:nbr:{{{user_tag(user_id)}}}"

    def history(self, user_id: str) -> str:
        return f"{self.prefix}:hist:{{{user_tag(user_id)}}}"

    @property
    def stream(self) -> str:
        return f"{self.prefix}:interactions"


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
    neighbourhood: bytes | None  # packed Neighbourhood when a current entry exists
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
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
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
        packed = None
        if raw is not None and raw[: len(_MAGIC)] == _MAGIC and raw[len(_MAGIC) : len(_MAGIC) + 8] == fp:
            packed = bytes(raw[len(_MAGIC) + 8 :])
        return Lookup(neighbourhood=packed, history=[h.decode() for h in hist], fingerprint=fp)

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

    async def store_neighbourhood(
        self, version: str, user_id: str, fingerprint: bytes, packed: bytes
    ) -> bool:
        """Best effort (a failure only costs a recomputation later)."""
        try:
            await self._call(
                lambda: self.client.set(
                    self.keys.nbr(version, user_id), _MAGIC + fingerprint + packed, ex=self.ttl_s
                )
            )
            return True
        except RedisUnavailable:
            return False

    async def append_interactions(
        self,
        user_id: str,
        items: Sequence[str],
        timestamps: Sequence[float] | None,
        version: str,
    ) -> str:
        """Store interactions durably; returns the stream entry id. Raises RedisUnavailable (then nothing
        was stored).

        One MULTI/EXEC: the stream entry, the live-history append (capped) and the cache invalidation happen
        all together or not at all.
        """
        hist_key = self.keys.history(user_id)
        fields = {
            "user": user_id,
            "items": orjson.dumps(list(items)),
            "ts": orjson.dumps(list(timestamps) if timestamps is not None else None),
            "received": f"{time.time():.3f}",
            "model_version": version,
        }

        async def run() -> list:
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(self.keys.stream, fields, maxlen=self.stream_maxlen, approximate=True)
            pipe.rpush(hist_key, *items)
            pipe.ltrim(hist_key, -self.history_max, -1)
            pipe.delete(self.keys.nbr(version, user_id))
            return await pipe.execute()

        result = await self._call(run)
        entry_id = result[0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

"""Exactly-once interaction writes: idempotency keys, the atomic write script, and what a failed write means.

A write is one Lua script on one hash slot (the user's shard): it checks the idempotency record, and only if
there is none appends the stream entry, appends the live history, drops the cached neighbourhood and sets the
record (with a TTL) -- all or nothing, because Redis runs a script atomically. A copy of the same write sent
again (a client retry, a request re-sent after a timeout) finds the record and returns the first answer.

When a write fails, the service must say whether it happened. ``certainly_not_sent`` is deliberately narrow:
only errors raised before the command could reach Redis (or a refusal Redis answered) count as "not
stored"; everything else (a timeout after sending, a connection dropped mid-reply) is "outcome unknown", and
the client retries with the same key, which is safe."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from redis.exceptions import (
    BusyLoadingError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

# Visible ASCII: UUIDs, ULIDs, base64 and the like; never whitespace or control characters.
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
IDEMPOTENCY_KEY_RULE = "1-128 visible ASCII characters"
DERIVED_PREFIX = "derived-"


class IdempotencyConflict(Exception):
    """The key was used before for a different request (other items or timestamps)."""


@dataclass(frozen=True)
class WriteResult:
    stream_id: str
    idempotency_key: str
    replayed: bool  # True: an earlier request with this key stored it; this one stored nothing


def request_fingerprint(items: Sequence[str], timestamps: Sequence[float] | None) -> str:
    """What a key stands for: the same key with another fingerprint is a client error, not a retry."""
    payload = orjson.dumps([list(items), list(timestamps) if timestamps is not None else None])
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def derive_key(user_id: str, items: Sequence[str], timestamps: Sequence[float] | None) -> str:
    """The key of a request that sent none: the same user, items and timestamps are the same write."""
    digest = hashlib.blake2b(user_id.encode() + b"\x00" + request_fingerprint(items, timestamps).encode())
    return DERIVED_PREFIX + digest.hexdigest()[:32]


def record_id(user_id: str, key: str) -> str:
    """Keys are per user (two users may pick the same key); hashed, so no client string reaches a key name."""
    return hashlib.blake2b(f"{user_id}\x00{key}".encode(), digest_size=16).hexdigest()


def certainly_not_sent(exc: BaseException) -> bool:
    """True only when the write cannot have run: no connection was made, or Redis refused the command.

    Anything else may have run (a command sent, then a timeout or a dropped connection), so it is unknown."""
    if isinstance(exc, BusyLoadingError):  # Redis is loading its data: it rejects commands unexecuted
        return True
    if isinstance(
        exc, ResponseError
    ):  # an error reply: Redis refused the script (CLUSTERDOWN, READONLY, ...)
        return True
    if isinstance(exc, RedisClusterException):  # raised by the cluster client before sending anything
        return True
    if isinstance(exc, RedisTimeoutError):
        return str(exc) == "Timeout connecting to server"
    if isinstance(exc, RedisConnectionError):
        msg = str(exc)
        return msg == "No connection available." or " connecting to " in msg
    return isinstance(exc, ConnectionRefusedError)


# KEYS: idempotency record, stream shard, history, neighbourhood cache entry (one slot: the user's shard).
# ARGV: fingerprint, record TTL (s), stream MAXLEN, history cap, item count, items..., stream field pairs...
# Returns {1, record} when it stored the write, {0, record} when the key was already recorded.
WRITE_SCRIPT = """
local prev = redis.call('GET', KEYS[1])
if prev then return {0, prev} end
local n = tonumber(ARGV[5])
local fields = {}
for i = 6 + n, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
redis.call('RPUSH', KEYS[3], unpack(ARGV, 6, 5 + n))
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
redis.call('DEL', KEYS[4])
local record = ARGV[1] .. ' ' .. id
redis.call('SET', KEYS[1], record, 'EX', ARGV[2])
return {1, record}
"""


def parse_record(record: bytes | str, fingerprint: str) -> str:
    """The stream id in a record; raises IdempotencyConflict if it was made for another request."""
    text = record.decode() if isinstance(record, bytes) else record
    stored_fp, _, stream_id = text.partition(" ")
    if stored_fp != fingerprint:
        raise IdempotencyConflict("Idempotency-Key was already used for a different request")
    return stream_id

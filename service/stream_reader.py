"""Reading the interaction stream back (``{prefix}:interactions:{s<k>}``, see ``service.cache``): what a
consumer such as ``edgerec retrain`` learns from.

The reader keeps, per shard, the last stream id it has consumed; :func:`read_since` returns every entry after
those positions up to each shard's newest entry *at the time of the call* (entries written meanwhile wait for
the next read), in pages, without blocking and without changing anything in Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import redis

START = "0-0"  # before every stream id
PAGE = 10_000


def stream_id_key(sid: str) -> tuple[int, int]:
    """A stream id ``<ms>-<seq>`` as a sortable pair."""
    ms, _, seq = sid.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise ValueError(f"not a Redis stream id: {sid!r}") from None


@dataclass(frozen=True)
class StreamEntry:
    """One acknowledged write: the fields ``Cache.append_interactions`` stores."""

    key: str  # the shard it was read from
    id: str
    user: str
    items: list[str]
    ts: list[float] | None
    received: float


@dataclass
class ShardRange:
    key: str
    after: str  # exclusive start: the reader's position before this read
    upper: str  # the position after it (the last id read, or ``after`` when nothing was new)
    first: str | None = None
    last: str | None = None
    count: int = 0  # entries read
    trimmed: bool = False  # entries newer than ``after`` were trimmed away (MAXLEN) before they were read

    def to_dict(self) -> dict:
        return {
            "after": self.after,
            "upper": self.upper,
            "first": self.first,
            "last": self.last,
            "count": self.count,
            "trimmed": self.trimmed,
        }


@dataclass
class StreamRead:
    entries: list[StreamEntry] = field(default_factory=list)  # arrival (stream id) order over all shards
    ranges: dict[str, ShardRange] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.entries)


def parse_entry(key: str, sid: str, fields: Mapping[bytes, bytes]) -> StreamEntry:
    f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    try:
        user = f["user"].decode()
        items = orjson.loads(f["items"])
        ts = orjson.loads(f["ts"]) if "ts" in f else None
        received = float(f.get("received", b"0"))
    except (KeyError, ValueError, AttributeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{key} entry {sid} is not an interaction record ({exc})") from None
    if not isinstance(items, list) or (ts is not None and len(ts) != len(items)):
        raise ValueError(f"{key} entry {sid}: malformed items/ts")
    return StreamEntry(
        key, sid, user, [str(i) for i in items], None if ts is None else [float(t) for t in ts], received
    )


def read_since(client, keys: Sequence[str], after: Mapping[str, str], page: int = PAGE) -> StreamRead:
    """Every entry of ``keys`` after ``after`` (key -> last consumed id; absent = from the start), up to each
    shard's newest entry when this call reaches it; entries sorted by stream id."""
    out = StreamRead()
    for key in keys:
        start = after.get(key) or START
        stream_id_key(start)
        newest = client.xrevrange(key, "+", "-", count=1)
        rng = ShardRange(key, start, start)
        if newest:
            end = newest[0][0].decode()
            rng.trimmed = _trimmed_after(client, key, start)
            cursor = start
            while stream_id_key(end) > stream_id_key(cursor):
                batch = client.xrange(key, f"({cursor}", end, count=page)
                if not batch:
                    break
                for sid_b, fields in batch:
                    sid = sid_b.decode()
                    out.entries.append(parse_entry(key, sid, fields))
                    rng.first = rng.first or sid
                    rng.last = rng.upper = cursor = sid
                    rng.count += 1
        out.ranges[key] = rng
    out.entries.sort(key=lambda e: stream_id_key(e.id))
    return out


def _trimmed_after(client, key: str, after: str) -> bool:
    """True when the stream has dropped (MAXLEN) an entry newer than ``after``: those were never read."""
    try:
        info = client.xinfo_stream(key)
    except redis.ResponseError:
        return False
    deleted = info.get("max-deleted-entry-id")
    if isinstance(deleted, bytes):
        deleted = deleted.decode()
    return bool(deleted) and deleted != START and stream_id_key(deleted) > stream_id_key(after)

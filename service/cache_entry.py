"""The one binary format of a cached user entry (the value of ``{prefix}:{version}:nbr:{<tag>}``).

An entry holds what the service derives from a user's stored history (train + live) alone: the graph
neighbourhood, the hop distances among the prompt's nodes, and the user vector with its candidate boosts.
The bounded BFS behind the distances is ~90 % of building a prompt, so a hit's prompt is ~10x cheaper; with
the user vector a repeat request for an unchanged user needs no encoder pass at all (only the search).

The entry starts with the fingerprint of the history it was built from: a lookup that reads another history
treats the entry as a miss (:func:`is_current`), so a stale entry never answers, even for a version swapped
back in later. Layout, little-endian, no pickle::

    header  magic "EDC4", fingerprint (8 bytes), user (int64, -1 none), has_nbr (uint8),
            n_items, n_co_users, n_two_hop, n_nodes, dim, n_boost (uint32 each)
    nbr     items int32[n_items], co_users int32[n_co_users], co_user_weight float32[n_co_users],
            two_hop_items int32[n_two_hop], two_hop_weight float32[n_two_hop]
    dist    nodes int32[n_nodes], hop distances int8[n_nodes, n_nodes]
    vector  float32[dim], then boost items int32[n_boost], boosts float32[n_boost]

A change of layout changes the magic; entries of another layout are misses, never errors.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from graphprompt.graph import Neighbourhood
from inference.ranker import Boost

MAGIC = b"EDC4"
FINGERPRINT_BYTES = 8
_HEAD = struct.Struct("<4s8sqBIIIIII")
_I32_MAX = np.iinfo(np.int32).max


def history_fingerprint(history: Sequence[bytes]) -> bytes:
    """8-byte digest of a user's live history (raw item ids as stored in Redis, oldest first)."""
    h = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    for item in history:
        h.update(item)
        h.update(b"\x00")
    return h.digest()


def is_current(raw: bytes | None, fingerprint: bytes) -> bool:
    """True when ``raw`` is an entry of this layout built from the history with ``fingerprint``."""
    return raw is not None and raw[:4] == MAGIC and raw[4 : 4 + FINGERPRINT_BYTES] == fingerprint


def _ids(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    if a.size and (a.min() < 0 or a.max() > _I32_MAX):
        raise ValueError("cache entry: ids must lie in [0, 2**31)")
    return a.astype("<i4")


@dataclass
class Entry:
    nbr: Neighbourhood | None = None
    distances: tuple[np.ndarray, np.ndarray] | None = None  # (sorted node ids, int8 [n, n] hop distances)
    vector: np.ndarray | None = None  # float32 [D]
    boost: Boost | None = None  # the candidate prior's (items, boosts) that go with ``vector``

    def pack(self, fingerprint: bytes) -> bytes:
        if len(fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
        nb = self.nbr
        if nb is not None and (
            len(nb.co_users) != len(nb.co_user_weight) or len(nb.two_hop_items) != len(nb.two_hop_weight)
        ):
            raise ValueError("cache entry: neighbourhood ids and weights differ in length")
        empty = np.zeros(0, np.int64)
        items, co, two = (
            (_ids(nb.items), _ids(nb.co_users), _ids(nb.two_hop_items)) if nb else (empty, empty, empty)
        )
        nodes, dist = self.distances if self.distances is not None else (empty, np.zeros((0, 0), np.int8))
        vec = np.zeros(0, "<f4") if self.vector is None else np.asarray(self.vector, dtype="<f4").ravel()
        b_items, b_vals = self.boost if self.boost is not None else (empty, np.zeros(0, np.float32))
        user = -1 if nb is None or nb.user is None else int(nb.user)
        head = _HEAD.pack(
            MAGIC, fingerprint, user, nb is not None, len(items), len(co), len(two), len(nodes), vec.size,
            len(b_items),
        )  # fmt: skip
        parts = [head, items.tobytes(), co.tobytes()]
        if nb is not None:
            parts += [np.asarray(nb.co_user_weight, "<f4").tobytes(), two.tobytes()]
            parts += [np.asarray(nb.two_hop_weight, "<f4").tobytes()]
        parts += [_ids(nodes).tobytes(), np.ascontiguousarray(dist, np.int8).tobytes(), vec.tobytes()]
        parts += [_ids(b_items).tobytes(), np.asarray(b_vals, dtype="<f4").tobytes()]
        return b"".join(parts)

    @classmethod
    def unpack(cls, data: bytes) -> Entry:
        """Inverse of :meth:`pack`; ValueError on anything malformed."""
        if len(data) < _HEAD.size:
            raise ValueError("cache entry too short")
        magic, _, user, has_nbr, n_it, n_co, n_two, n, dim, n_boost = _HEAD.unpack_from(data)
        size = _HEAD.size + 4 * (n_it + 2 * n_co + 2 * n_two) + 4 * n + n * n + 4 * dim + 8 * n_boost
        if magic != MAGIC or len(data) != size or (not has_nbr and n_it + n_co + n_two):
            raise ValueError("not a cache entry of this layout")
        off = _HEAD.size

        def take(count: int, dtype: str) -> np.ndarray:
            nonlocal off
            out = np.frombuffer(data, dtype=dtype, count=count, offset=off)
            off += out.nbytes
            return out

        nbr = None
        if has_nbr:
            items, co, co_w = take(n_it, "<i4"), take(n_co, "<i4"), take(n_co, "<f4")
            two, two_w = take(n_two, "<i4"), take(n_two, "<f4")
            nbr = Neighbourhood(
                items=items.astype(np.int64),
                co_users=co.astype(np.int64),
                co_user_weight=co_w.astype(np.float32),
                two_hop_items=two.astype(np.int64),
                two_hop_weight=two_w.astype(np.float32),
                user=None if user < 0 else int(user),
            )
        nodes, dist = take(n, "<i4").astype(np.int64), take(n * n, "i1").reshape(n, n)
        distances = (nodes, dist) if n else None
        vector = take(dim, "<f4").astype(np.float32) if dim else None
        b_items, b_vals = take(n_boost, "<i4").astype(np.int64), take(n_boost, "<f4").astype(np.float32)
        # a vector is stored with its boosts (none for a model without the prior)
        boost = (b_items, b_vals) if vector is not None else None
        return cls(nbr, distances, vector, boost)

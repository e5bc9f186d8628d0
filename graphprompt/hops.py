"""Hop distances among small node sets of a :class:`~graphprompt.graph.BipartiteGraph`: a bounded BFS.

Hop distances among a small node set are a bounded BFS that meets in the middle, in *item space*. Every
node gets bitsets (one bit per item) of the items within r hops: for an item, r = 0 (itself), 2 (its
co-occurrence row C(i): items sharing a user), 4, ...; for a user, r = 1 (its items), 3 (OR of C(i) over its
items), ... Any shortest path of length d <= a + b has an item at distance <= a from one end and <= b from the
other (parity makes the split work for any allowed a, b), so ``d(x, y) <= a + b`` exactly when ball_a(x) and
ball_b(y) share a bit. For max_hops = 5 that needs only C rows, which are cached on the engine (all of them
when they fit ``cooc_cache_bytes``: amazon-sports needs 42 MB), so a query is a few ORs and ANDs of bitsets
with no per-source BFS. Live edges (added / removed) rebuild only the C rows they can change.

Each graph owns one engine (``graph.hops``); callers ask the graph (``hop_distances``,
``hop_distances_many``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from graphprompt.graph import BipartiteGraph

Edges = tuple[np.ndarray, np.ndarray]


class HopDistances:
    """The BFS engine of one graph, with its cache of item co-occurrence bitsets (shared by all queries)."""

    # Memory for cached item co-occurrence bitsets (n_items / 8 bytes each); all of them when they fit.
    cooc_cache_bytes: int = 512 * 2**20

    def __init__(self, graph: BipartiteGraph):
        self.g = graph
        self._rows: _RowCache | None = None
        self._w2: np.ndarray | None = None

    def many(
        self,
        node_sets: Sequence[np.ndarray],
        max_hops: int,
        extra_edges: Edges | None = None,
        removed_edges: Edges | None = None,
        *,
        chunk_bytes: int = 16 * 2**20,
    ) -> list[np.ndarray]:
        """int8 hop distances for each of many small node sets (training builds many prompts per batch).

        Sets are processed in chunks whose bitsets fit ``chunk_bytes``; within a chunk every distinct node's
        balls are built once, with all co-occurrence rows fetched in one vectorised pass (and cached by the
        engine for later calls). ``extra_edges`` / ``removed_edges``: one ``(users, items)`` pair of edge
        changes applied for every set.
        """
        if (
            isinstance(max_hops, bool)
            or not isinstance(max_hops, int | np.integer)
            or not 1 <= max_hops <= 120
        ):
            raise ValueError(f"max_hops must be an int in [1, 120], got {max_hops!r}")
        sets = [self.g.check_nodes(s) for s in node_sets]
        if not sets:
            return []
        out: list[np.ndarray | None] = [None] * len(sets)
        mods = self._modifications(extra_edges, removed_edges)
        for chunk in self._chunks(sets, chunk_bytes):
            dists = self._distances_chunk([sets[k] for k in chunk], int(max_hops), mods)
            for k, d in zip(chunk, dists, strict=True):
                out[k] = d
        return out  # type: ignore[return-value]

    def warm(self) -> HopDistances:
        """Precompute all item co-occurrence bitsets when they fit the cache (nothing in the
        service or training calls it; benchmarks/graph_bench.py times it).

        Hop-distance queries then only OR and AND bitsets; on larger graphs rows are computed on first use.
        """
        if self.g.n_items * self.n_words * 8 <= self.cooc_cache_bytes:
            self._cooc_rows(np.arange(self.g.n_items, dtype=np.int64), None)
        return self

    @property
    def n_words(self) -> int:
        return (self.g.n_items + 63) // 64

    def _cache(self) -> _RowCache:
        if self._rows is None:  # two threads racing here both build an empty cache; either one is fine
            cap = max(1, min(self.g.n_items, self.cooc_cache_bytes // (8 * self.n_words)))
            self._rows = _RowCache(self.g.n_items, self.n_words, cap)
        return self._rows

    def _walk2_items(self) -> np.ndarray:
        """Per item, the sum of its users' degrees: the work of building its co-occurrence row."""
        if self._w2 is None:
            self._w2 = self.g.iu @ self.g.user_degree().astype(np.float64)
        return self._w2

    def _modifications(self, extra: Edges | None, removed: Edges | None) -> _Mods | None:
        """Neighbour lists of the nodes touched by live edge changes (removal wins over addition)."""
        if extra is None and removed is None:
            return None
        eu, ei = self.g.check_edges(extra) if extra is not None else (np.zeros(0, np.int64),) * 2
        ru, ri = self.g.check_edges(removed) if removed is not None else (np.zeros(0, np.int64),) * 2
        add = set(zip(eu.tolist(), ei.tolist(), strict=True))
        rem = set(zip(ru.tolist(), ri.tolist(), strict=True))
        add -= rem
        by_user: dict[int, tuple[set[int], set[int]]] = {}
        by_item: dict[int, tuple[set[int], set[int]]] = {}
        for edges, k in ((add, 0), (rem, 1)):
            for u, i in edges:
                by_user.setdefault(u, (set(), set()))[k].add(i)
                by_item.setdefault(i, (set(), set()))[k].add(u)
        user_items: dict[int, np.ndarray] = {}
        item_users: dict[int, np.ndarray] = {}
        for u, (plus, minus) in by_user.items():
            row = set(self.g.user_items(u).tolist())
            if (new := (row | plus) - minus) != row:
                user_items[u] = np.array(sorted(new), dtype=np.int64)
        for i, (plus, minus) in by_item.items():
            row = set(self.g.item_users(i).tolist())
            if (new := (row | plus) - minus) != row:
                item_users[i] = np.array(sorted(new), dtype=np.int64)
        if not user_items:
            return None
        # An item's co-occurrence row can change only if one of its users (before or after) changed.
        affected = np.zeros(self.g.n_items, dtype=bool)
        for u, new_items in user_items.items():
            affected[self.g.user_items(u)] = True
            affected[new_items] = True
        return _Mods(user_items=user_items, item_users=item_users, affected=affected)

    def _items_of(self, users: np.ndarray, mods: _Mods | None) -> tuple[np.ndarray, np.ndarray]:
        """(owner position, item) pairs for the items of each user in ``users`` (edge changes applied)."""
        return _rows_with_overrides(self.g.ui, users, None if mods is None else mods.user_items)

    def _users_of(self, items: np.ndarray, mods: _Mods | None) -> tuple[np.ndarray, np.ndarray]:
        return _rows_with_overrides(self.g.iu, items, None if mods is None else mods.item_users)

    def _compute_cooc(self, items: np.ndarray, mods: _Mods | None) -> np.ndarray:
        """Bitset rows (len(items) x words) of the items within 2 hops of each item, itself included."""
        w = self.n_words
        out = np.zeros((items.size, w), dtype=np.uint64)
        work = self._walk2_items()[items] + 1.0
        # sub-batches bounded by gathered entries and by the dense boolean scratch they are packed from
        max_rows = max(1, (64 * 2**20) // (w * 64))
        start = 0
        while start < items.size:
            stop = start + 1
            budget = work[start]
            while stop < items.size and stop - start < max_rows and budget + work[stop] <= 16_000_000:
                budget += work[stop]
                stop += 1
            part = items[start:stop]
            own_u, users = self._users_of(part, mods)
            own_i, its = self._items_of(users, mods)
            dense = np.zeros((part.size, w * 64), dtype=bool)
            dense[own_u[own_i], its] = True
            dense[np.arange(part.size), part] = True
            out[start:stop] = np.packbits(dense, axis=1, bitorder="little").view(np.uint64)
            start = stop
        return out

    def _cooc_rows(self, items: np.ndarray, mods: _Mods | None) -> np.ndarray:
        """Co-occurrence bitsets of unique ``items``: cached for the snapshot, fresh where edges changed."""
        out = np.empty((items.size, self.n_words), dtype=np.uint64)
        fresh = mods.affected[items] if mods is not None else np.zeros(items.size, dtype=bool)
        if fresh.any():
            out[fresh] = self._compute_cooc(items[fresh], mods)
        cache = self._cache()
        with cache.lock:  # the service queries from several threads; a put may evict rows being read
            slot = cache.slot[items]
            hit = ~fresh & (slot >= 0)
            out[hit] = cache.table[slot[hit]]
        miss = ~fresh & (slot < 0)
        if miss.any():
            rows = self._compute_cooc(items[miss], None)
            out[miss] = rows
            with cache.lock:
                cache.put(items[miss], rows)
        return out

    def _item_balls(self, items: np.ndarray, radii: list[int], mods: _Mods | None) -> dict[int, np.ndarray]:
        """Item-space bitsets of the items within r hops of each item, for each even r in ``radii``."""
        w = self.n_words
        balls: dict[int, np.ndarray] = {}
        cur = np.zeros((items.size, w), dtype=np.uint64)
        np.bitwise_or.at(
            cur, (np.arange(items.size), items // 64), np.uint64(1) << (items % 64).astype(np.uint64)
        )
        balls[0] = cur
        for r in range(2, max(radii) + 1, 2):
            if r == 2:
                cur = self._cooc_rows(items, mods)
            else:  # one more item-item hop: OR the co-occurrence rows of everything in the previous ball
                owner, members = _bits_to_ids(cur)
                uniq, inv = np.unique(members, return_inverse=True)
                cur = _or_segments(self._cooc_rows(uniq, mods), inv, owner, items.size)
            balls[r] = cur
        return {r: balls[r] for r in radii}

    def _user_balls(self, users: np.ndarray, radii: list[int], mods: _Mods | None) -> dict[int, np.ndarray]:
        """Item-space bitsets of the items within r hops of each user, for each odd r in ``radii``."""
        owner, its = self._items_of(users, mods)
        uniq, inv = np.unique(its, return_inverse=True)
        item_balls = self._item_balls(uniq, [r - 1 for r in radii], mods)
        return {r: _or_segments(item_balls[r - 1], inv, owner, users.size) for r in radii}

    def _chunks(self, sets: list[np.ndarray], budget: int) -> list[list[int]]:
        """Group set indices so each group's bitsets (its nodes and its users' items) fit ``budget`` bytes."""
        row_bytes = 8 * self.n_words
        deg = self.g.user_degree()
        chunks: list[list[int]] = []
        cur: list[int] = []
        used = 0
        for k, s in enumerate(sets):
            users = s[s < self.g.n_users]
            est = row_bytes * (3 * s.size + 2 * int(deg[users].sum()))
            if cur and used + est > budget:
                chunks.append(cur)
                cur, used = [], 0
            cur.append(k)
            used += est
        if cur:
            chunks.append(cur)
        return chunks

    def _distances_chunk(self, sets: list[np.ndarray], max_hops: int, mods: _Mods | None) -> list[np.ndarray]:
        """Distances for each set; every distinct node's balls are built once for the whole chunk."""
        far = max_hops + 1
        h_even = max_hops - max_hops % 2
        h_odd = max_hops - (1 - max_hops % 2)
        # Ball radii (users: odd, items: even) such that every distance up to max_hops splits as a + b.
        r_user = max(1, h_even // 2 + (1 - (h_even // 2) % 2))
        r_item = h_even // 2 + (h_even // 2) % 2
        if r_user + r_item < h_odd:
            r_item += 2
        uniq = np.unique(np.concatenate(sets))
        users = uniq[uniq < self.g.n_users]
        items = uniq[uniq >= self.g.n_users] - self.g.n_users
        ub = self._user_balls(users, list(range(1, r_user + 1, 2)), mods) if users.size else {}
        ib = self._item_balls(items, list(range(0, r_item + 1, 2)), mods) if items.size else {}
        out = []
        for s in sets:
            q, inv = np.unique(s, return_inverse=True)
            is_user = q < self.g.n_users
            iu_, ii_ = np.flatnonzero(is_user), np.flatnonzero(~is_user)
            i_ids = q[ii_] - self.g.n_users
            pu, pi = np.searchsorted(users, q[iu_]), np.searchsorted(items, i_ids)
            u_b = {r: b[pu] for r, b in ub.items()} if iu_.size else {}
            i_b = {r: b[pi] for r, b in ib.items()} if ii_.size else {}
            d = np.full((q.size, q.size), far, dtype=np.int8)
            # (rows, cols, their balls, row ball radius, largest t answered by bit lookup, distances to test)
            for rows, cols, rb, cb, r_rows, r_look, dists in (
                (iu_, iu_, u_b, u_b, r_user, 0, range(2, h_even + 1, 2)),
                (ii_, ii_, i_b, i_b, r_item, r_item, range(2, h_even + 1, 2)),
                (iu_, ii_, u_b, i_b, r_user, r_user, range(1, h_odd + 1, 2)),
            ):
                if rows.size == 0 or cols.size == 0:
                    continue
                block = np.full((rows.size, cols.size), far, dtype=np.int8)
                for t in dists:
                    if t <= r_look:  # columns are items: is item y itself in ball_t(x)? (split t + 0)
                        hit = _has_bits(rb[t], i_ids)
                    else:  # split t = a + b over available radii (user-user: both odd, so a <= t - 1)
                        a = min(r_rows, t - 1 if cols is rows and rb is u_b else t)
                        hit = _intersects(rb[a], cb[t - a])
                    block[hit & (block == far)] = t
                d[np.ix_(rows, cols)] = block
                d[np.ix_(cols, rows)] = block.T
            np.fill_diagonal(d, 0)
            out.append(d[np.ix_(inv, inv)])
        return out


@dataclass
class _Mods:
    """Live edge changes: the new neighbour lists of the nodes they touch."""

    user_items: dict[int, np.ndarray]
    item_users: dict[int, np.ndarray]
    affected: np.ndarray  # bool per item: its co-occurrence row may differ from the snapshot's


class _RowCache:
    """Ring buffer of item co-occurrence bitset rows (memory is committed only as rows are written)."""

    def __init__(self, n_items: int, n_words: int, capacity: int):
        self.slot = np.full(n_items, -1, dtype=np.int64)
        self.owner = np.full(capacity, -1, dtype=np.int64)
        self.table = np.zeros((capacity, n_words), dtype=np.uint64)
        self.next = 0
        self.lock = threading.Lock()

    def put(self, items: np.ndarray, rows: np.ndarray) -> None:
        cap = self.owner.size
        if items.size > cap:
            items, rows = items[-cap:], rows[-cap:]
        pos = (self.next + np.arange(items.size)) % cap
        old = self.owner[pos]
        self.slot[old[old >= 0]] = -1
        self.owner[pos] = items
        self.slot[items] = pos
        self.table[pos] = rows
        self.next = int((self.next + items.size) % cap)


def _ranges(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR rows ``rows``: (position in ``rows``, index into ``indices``) of every stored entry."""
    starts = indptr[rows].astype(np.int64)
    lens = indptr[rows + 1].astype(np.int64) - starts
    owner = np.repeat(np.arange(rows.size, dtype=np.int64), lens)
    offsets = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return owner, np.repeat(starts, lens) + offsets


def _or_segments(table: np.ndarray, idx: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Row k of the result: OR of ``table[idx[j]]`` over all j with ``owner[j] == k`` (zeros where none)."""
    out = np.zeros((n, table.shape[1]), dtype=np.uint64)
    if idx.size == 0:
        return out
    order = np.argsort(owner, kind="stable")
    owner, idx = owner[order], idx[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    out[owner[starts]] = np.bitwise_or.reduceat(table[idx], starts, axis=0)
    return out


def _bits_to_ids(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, bit index) of every set bit of a bitset matrix."""
    bits = np.unpackbits(rows.view(np.uint8), axis=1, bitorder="little")
    r, c = np.nonzero(bits)
    return r.astype(np.int64), c.astype(np.int64)


def _has_bits(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(len(rows), len(ids)) bool: whether bit ``ids[j]`` is set in bitset row ``rows[i]``."""
    words = rows[:, ids // 64]
    return ((words >> (ids % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)


def _intersects(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bool: whether bitset rows a[i] and b[j] share a set bit."""
    out = np.zeros((a.shape[0], b.shape[0]), dtype=bool)
    if out.size == 0:
        return out
    step = max(1, (32 * 2**20) // max(1, b.nbytes))  # bound the (rows x len(b) x words) scratch
    for s in range(0, a.shape[0], step):
        out[s : s + step] = (a[s : s + step, None, :] & b[None, :, :]).any(axis=2)
    return out


def _rows_with_overrides(
    m: sp.csr_matrix, keys: np.ndarray, overrides: dict[int, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(owner position, neighbour) pairs of the CSR rows ``keys``; a row in ``overrides`` (live edge changes)
    replaces the stored one. Shared by the user->items and item->users directions."""
    owner, pos = _ranges(m.indptr, keys)
    nbrs = m.indices[pos].astype(np.int64)
    if not overrides:
        return owner, nbrs
    hit = np.array([k in overrides for k in keys.tolist()], dtype=bool)
    if not hit.any():
        return owner, nbrs
    keep = ~hit[owner]
    own2 = [owner[keep]]
    nb2 = [nbrs[keep]]
    for k in np.flatnonzero(hit).tolist():
        new = overrides[int(keys[k])]
        own2.append(np.full(new.size, k, dtype=np.int64))
        nb2.append(new)
    return np.concatenate(own2), np.concatenate(nb2)

"""The user–item train graph: neighbourhoods for prompts and hop distances for the attention bias.

Global node ids: users ``0..U-1``, items ``U..U+I-1`` (``graph.item_node(i) = U + i``). The graph is built
from **train** edges only. Everything here is numpy/scipy: no dense (U+I)^2 array is ever built.

Hop distances among a small node set are a bounded BFS that meets in the middle, in *item space*. Every
node gets bitsets (one bit per item) of the items within r hops: for an item, r = 0 (itself), 2 (its
co-occurrence row C(i): items sharing a user), 4, ...; for a user, r = 1 (its items), 3 (OR of C(i) over its
items), ... Any shortest path of length d <= a + b has an item at distance <= a from one end and <= b from the
other (parity makes the split work for any allowed a, b), so ``d(x, y) <= a + b`` exactly when ball_a(x) and
ball_b(y) share a bit. For max_hops = 5 that needs only C rows, which are cached on the graph (all of them
when they fit ``cooc_cache_bytes``: amazon-sports needs 42 MB), so a query is a few ORs and ANDs of bitsets
with no per-source BFS. Live edges (added / removed) rebuild only the C rows they can change.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

FORMAT_VERSION = 1

Edges = tuple[np.ndarray, np.ndarray]
# For the batched call: one modification for all sets, or one per set (None where a set has none).
EdgesArg = Edges | Sequence[Edges | None] | None


# ------------------------------------------------------------------ neighbourhood
@dataclass
class Neighbourhood:
    """A user's graph neighbourhood as the prompt builder sees it (service.cache_entry caches it).

    ``items``: first-order items (the user's train items, or the history that was passed in, first occurrence
    order kept). ``co_users``: second-order users, most shared items first, ``co_user_weight`` their
    shared-item counts. ``two_hop_items``: items reached through those users, most co-occurrences first,
    excluding ``items``; ``two_hop_weight`` the co-occurrence counts. Ties are broken by the smaller id.
    """

    items: np.ndarray  # int64 item indices
    co_users: np.ndarray  # int64 user indices
    co_user_weight: np.ndarray  # float32
    two_hop_items: np.ndarray  # int64 item indices
    two_hop_weight: np.ndarray  # float32
    user: int | None = None  # the user the neighbourhood is for (None: a user the graph does not know)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Neighbourhood):
            return NotImplemented
        return self.user == other.user and all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("items", "co_users", "co_user_weight", "two_hop_items", "two_hop_weight")
        )


def _top_k(ids: np.ndarray, counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k ids with the largest counts, ties by smaller id (``ids`` unique)."""
    if k <= 0 or ids.size == 0:
        return ids[:0].astype(np.int64), counts[:0].astype(np.float32)
    if ids.size > k:
        # Pre-select with a partial sort on counts alone, keeping every id tied with the k-th count.
        kth = -np.partition(-counts, k - 1)[k - 1]
        keep = counts >= kth
        ids, counts = ids[keep], counts[keep]
    order = np.lexsort((ids, -counts))[:k]
    return ids[order].astype(np.int64), counts[order].astype(np.float32)


# ------------------------------------------------------------------ graph
class BipartiteGraph:
    """Users × items train graph with neighbourhood and bounded-BFS hop-distance queries."""

    # Memory for cached item co-occurrence bitsets (n_items / 8 bytes each); all of them when they fit.
    cooc_cache_bytes: int = 512 * 2**20

    def __init__(self, ui: sp.csr_matrix):
        self.ui: sp.csr_matrix = ui
        self.n_users, self.n_items = ui.shape
        self.iu: sp.csr_matrix = ui.T.tocsr()
        self.iu.sort_indices()
        self._rows: _RowCache | None = None
        self._w2: np.ndarray | None = None
        self._deg_u: np.ndarray | None = None
        self._deg_i: np.ndarray | None = None

    # ---------------------------------------------------------------- building
    @classmethod
    def from_matrix(cls, train: sp.spmatrix | sp.sparray | np.ndarray) -> BipartiteGraph:
        """From a users × items matrix; every non-zero entry is an edge (values are ignored)."""
        if not sp.issparse(train) and np.ndim(train) != 2:
            raise ValueError(f"train matrix must be 2-D users x items, got shape {np.shape(train)}")
        m = sp.csr_matrix(train, copy=True)
        m.sum_duplicates()
        m.eliminate_zeros()
        m = sp.csr_matrix((np.ones(m.nnz, dtype=np.float32), m.indices, m.indptr), shape=m.shape)
        m.sort_indices()
        return cls(m)

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def n_edges(self) -> int:
        return int(self.ui.nnz)

    def item_node(self, i: int | np.ndarray) -> int | np.ndarray:
        """Global node id of item index ``i``."""
        return self.n_users + i

    def node_item(self, node: int | np.ndarray) -> int | np.ndarray:
        """Item index of global node id ``node`` (which must be an item node)."""
        return node - self.n_users

    def is_user_node(self, nodes: np.ndarray) -> np.ndarray:
        return np.asarray(nodes) < self.n_users

    def user_degree(self) -> np.ndarray:
        if self._deg_u is None:
            self._deg_u = np.diff(self.ui.indptr)
        return self._deg_u

    def item_degree(self) -> np.ndarray:
        if self._deg_i is None:
            self._deg_i = np.diff(self.iu.indptr)
        return self._deg_i

    def user_items(self, u: int) -> np.ndarray:
        """The user's train items (int64 item indices, ascending)."""
        self._check_user(u)
        return self.ui.indices[self.ui.indptr[u] : self.ui.indptr[u + 1]].astype(np.int64)

    def item_users(self, i: int) -> np.ndarray:
        """The item's train users (int64 user indices, ascending)."""
        if not 0 <= int(i) < self.n_items:
            raise ValueError(f"item index {i} out of range [0, {self.n_items})")
        return self.iu.indices[self.iu.indptr[i] : self.iu.indptr[i + 1]].astype(np.int64)

    def _check_user(self, u: int) -> None:
        if not 0 <= int(u) < self.n_users:
            raise ValueError(f"user index {u} out of range [0, {self.n_users})")

    # ---------------------------------------------------------------- neighbourhood
    def neighbourhood(
        self,
        u: int | None,
        items: np.ndarray | None = None,
        *,
        n_users: int,
        n_items: int,
        item_norm: float,
    ) -> Neighbourhood:
        """First-order items, top ``n_users`` second-order users and top ``n_items`` two-hop items of a user.

        No defaults here: the settings' one source is ``PromptConfig`` (``n_co_users``, ``n_two_hop_items``,
        ``two_hop_norm``), which ``PromptBuilder.neighbourhood`` passes on.

        ``items`` replaces the user's train items when given (pass live history, e.g. train items plus new
        interactions); with ``u=None`` (a user the graph does not know) ``items`` is required. Second-order
        users are counted over ``items`` and exclude ``u``; two-hop item counts are co-occurrences with
        ``items`` over all those users (so ``u``'s own train row never counts), and exclude ``items``
        themselves. ``item_norm`` = a ranks two-hop items by ``co-occurrence / degree**a`` instead of the raw
        count (0: raw, popular items first; 0.5: cosine-like, as item-based kNN ranks neighbours).
        """
        if n_users < 0 or n_items < 0:
            raise ValueError("n_users and n_items must be >= 0")
        if u is not None:
            self._check_user(u)
        if items is None:
            if u is None:
                raise ValueError("neighbourhood needs a user index or an items array (cold start)")
            hist = self.user_items(u)
        else:
            hist = self._check_items(items)
        # Users sharing items: one row slice of the items x users matrix, then a count per user.
        rows = self.iu[hist]
        users, counts = _count_ids(rows.indices, self.n_users)
        if u is not None:
            keep = users != u
            users, counts = users[keep], counts[keep]
        co_users, co_w = _top_k(users, counts, n_users)
        # Two-hop items: counts-weighted sum of those users' rows = co-occurrence with ``hist``.
        if users.size and n_items > 0:
            w = sp.csr_matrix(
                (counts.astype(np.float32), (np.zeros(users.size, np.int32), users)), shape=(1, self.n_users)
            )
            reach = w @ self.ui
            cand, c = reach.indices.astype(np.int64), reach.data
            keep = ~np.isin(cand, hist) & (c > 0)
            cand, c = cand[keep], c[keep]
            if item_norm:
                c = c / np.power(np.maximum(self.item_degree()[cand], 1), item_norm).astype(np.float32)
            two, two_w = _top_k(cand, c, n_items)
        else:
            two, two_w = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return Neighbourhood(hist, co_users, co_w, two, two_w, user=None if u is None else int(u))

    def _check_items(self, items: np.ndarray) -> np.ndarray:
        a = np.asarray(items)
        if a.ndim != 1:
            raise ValueError(f"items must be a 1-D array of item indices, got shape {a.shape}")
        if a.size == 0:
            return np.zeros(0, np.int64)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"items must be integer item indices, got dtype {a.dtype}")
        if a.min() < 0 or a.max() >= self.n_items:
            raise ValueError(f"item index out of range [0, {self.n_items}): min {a.min()}, max {a.max()}")
        _, first = np.unique(a, return_index=True)  # dedupe, keeping first-occurrence order
        return a[np.sort(first)].astype(np.int64)

    # ---------------------------------------------------------------- edges and distances
    def direct_edges(
        self, nodes: np.ndarray, extra_edges: Edges | None = None, removed_edges: Edges | None = None
    ) -> np.ndarray:
        """bool (n, n) adjacency among ``nodes`` (train graph + ``extra_edges`` - ``removed_edges``)."""
        nodes = self._check_nodes(nodes)
        n = nodes.size
        out = np.zeros((n, n), dtype=bool)
        pu = np.flatnonzero(nodes < self.n_users)
        pi = np.flatnonzero(nodes >= self.n_users)
        if pu.size == 0 or pi.size == 0:
            return out
        users, items = nodes[pu], nodes[pi] - self.n_users
        sub = self.ui[users][:, items].toarray() > 0
        for edges, value in ((extra_edges, True), (removed_edges, False)):  # removal applied last: it wins
            if edges is None:
                continue
            eu, ei = self._check_edges(edges)
            hit = np.isin(eu, users) & np.isin(ei, items)  # only edges between nodes of this set matter
            for x, y in zip(eu[hit].tolist(), ei[hit].tolist(), strict=True):
                sub[np.ix_(users == x, items == y)] = value
        out[np.ix_(pu, pi)] = sub
        out[np.ix_(pi, pu)] = sub.T
        return out

    def hop_distances(
        self,
        nodes: np.ndarray,
        max_hops: int = 5,
        extra_edges: Edges | None = None,
        removed_edges: Edges | None = None,
    ) -> np.ndarray:
        """int8 (n, n) hop distances among global node ids; ``max_hops + 1`` where farther, 0 on the diagonal.

        ``extra_edges = (user_idx, item_idx)`` adds live edges on top of the snapshot; ``removed_edges`` (same
        form) takes edges away (e.g. a user's held-out edges). Removal wins over addition.
        """
        extra = None if extra_edges is None else tuple(extra_edges)
        removed = None if removed_edges is None else tuple(removed_edges)
        return self.hop_distances_many([nodes], max_hops, extra, removed)[0]

    def hop_distances_many(
        self,
        node_sets: Sequence[np.ndarray],
        max_hops: int = 5,
        extra_edges: EdgesArg = None,
        removed_edges: EdgesArg = None,
        *,
        chunk_bytes: int = 16 * 2**20,
    ) -> list[np.ndarray]:
        """:meth:`hop_distances` for many small node sets at once (training builds many prompts per batch).

        Sets are processed in chunks whose bitsets fit ``chunk_bytes``; within a chunk every distinct node's
        balls are built once, with all co-occurrence rows fetched in one vectorised pass (and cached on the
        graph for later calls). ``extra_edges`` / ``removed_edges``: one ``(users, items)`` tuple for all
        sets, or a list with one entry (or None) per set; sets with their own edge changes are computed one
        by one.
        """
        if (
            isinstance(max_hops, bool)
            or not isinstance(max_hops, int | np.integer)
            or not 1 <= max_hops <= 120
        ):
            raise ValueError(f"max_hops must be an int in [1, 120], got {max_hops!r}")
        sets = [self._check_nodes(s) for s in node_sets]
        if not sets:
            return []
        extra = _per_set(extra_edges, len(sets), "extra_edges")
        removed = _per_set(removed_edges, len(sets), "removed_edges")
        out: list[np.ndarray | None] = [None] * len(sets)
        if not (isinstance(extra_edges, list) or isinstance(removed_edges, list)):
            mods = self._modifications(extra[0], removed[0])
            for chunk in self._chunks(sets, chunk_bytes):
                dists = self._distances_chunk([sets[k] for k in chunk], int(max_hops), mods)
                for k, d in zip(chunk, dists, strict=True):
                    out[k] = d
        else:
            for k, s in enumerate(sets):
                mods = self._modifications(extra[k], removed[k])
                out[k] = self._distances_chunk([s], int(max_hops), mods)[0]
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``ui.indptr.npy``, ``ui.indices.npy`` and ``shape.json`` (no pickle) into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        _save_npy(out / "ui.indptr.npy", self.ui.indptr.astype(np.int64))
        _save_npy(out / "ui.indices.npy", self.ui.indices.astype(np.int32))
        meta = {
            "format_version": FORMAT_VERSION,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_edges": self.n_edges,
        }
        _atomic_write(out / "shape.json", json.dumps(meta).encode())
        return out

    @classmethod
    def load(cls, folder: str | Path) -> BipartiteGraph:
        p = Path(folder)
        if not (p / "shape.json").exists():
            raise FileNotFoundError(f"{p} holds no saved graph (shape.json missing)")
        meta = json.loads((p / "shape.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{p}: graph format {meta.get('format_version')} != {FORMAT_VERSION}")
        n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
        indptr = np.load(p / "ui.indptr.npy", allow_pickle=False)
        indices = np.load(p / "ui.indices.npy", allow_pickle=False)
        if indptr.shape != (n_users + 1,) or indptr[0] != 0 or indptr[-1] != indices.size:
            raise ValueError(
                f"{p}: ui.indptr.npy does not match shape.json ({n_users} users, {indices.size} edges)"
            )
        if np.any(np.diff(indptr) < 0):
            raise ValueError(f"{p}: ui.indptr.npy is not non-decreasing")
        if indices.size and (indices.min() < 0 or indices.max() >= n_items):
            raise ValueError(f"{p}: ui.indices.npy holds item indices outside [0, {n_items})")
        if indices.size != int(meta.get("n_edges", indices.size)):
            raise ValueError(f"{p}: {indices.size} edges stored, shape.json says {meta['n_edges']}")
        ui = sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(n_users, n_items))
        return cls.from_matrix(ui)

    # ---------------------------------------------------------------- internals
    def _check_nodes(self, nodes: np.ndarray) -> np.ndarray:
        a = np.asarray(nodes)
        if a.ndim != 1:
            raise ValueError(f"nodes must be a 1-D array of global node ids, got shape {a.shape}")
        if a.size == 0:
            return np.zeros(0, np.int64)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"nodes must be integer global node ids, got dtype {a.dtype}")
        if a.min() < 0 or a.max() >= self.n_nodes:
            raise ValueError(f"node id out of range [0, {self.n_nodes}): min {a.min()}, max {a.max()}")
        return a.astype(np.int64)

    def _check_edges(self, edges: Edges) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(edges, tuple | list) or len(edges) != 2:
            raise ValueError("edges must be a pair (user_idx array, item_idx array)")
        eu, ei = (np.asarray(e).reshape(-1) for e in edges)
        if eu.shape != ei.shape:
            raise ValueError(f"edge arrays differ in length: {eu.size} users, {ei.size} items")
        if eu.size == 0:
            return eu.astype(np.int64), ei.astype(np.int64)
        if not (np.issubdtype(eu.dtype, np.integer) and np.issubdtype(ei.dtype, np.integer)):
            raise ValueError("edge arrays must hold integer user / item indices")
        if eu.min() < 0 or eu.max() >= self.n_users:
            raise ValueError(f"edge user index out of range [0, {self.n_users})")
        if ei.min() < 0 or ei.max() >= self.n_items:
            raise ValueError(f"edge item index out of range [0, {self.n_items})")
        return eu.astype(np.int64), ei.astype(np.int64)

    def warm(self) -> BipartiteGraph:
        """Precompute all item co-occurrence bitsets when they fit the cache (e.g. when a service loads).

        Hop-distance queries then only OR and AND bitsets; on larger graphs rows are computed on first use.
        """
        if self.n_items * self._n_words * 8 <= self.cooc_cache_bytes:
            self._cooc_rows(np.arange(self.n_items, dtype=np.int64), None)
        return self

    @property
    def _n_words(self) -> int:
        return (self.n_items + 63) // 64

    def _cache(self) -> _RowCache:
        if self._rows is None:  # two threads racing here both build an empty cache; either one is fine
            cap = max(1, min(self.n_items, self.cooc_cache_bytes // (8 * self._n_words)))
            self._rows = _RowCache(self.n_items, self._n_words, cap)
        return self._rows

    def _walk2_items(self) -> np.ndarray:
        """Per item, the sum of its users' degrees: the work of building its co-occurrence row."""
        if self._w2 is None:
            self._w2 = self.iu @ self.user_degree().astype(np.float64)
        return self._w2

    def _modifications(self, extra: Edges | None, removed: Edges | None) -> _Mods | None:
        """Neighbour lists of the nodes touched by live edge changes (removal wins over addition)."""
        if extra is None and removed is None:
            return None
        eu, ei = self._check_edges(extra) if extra is not None else (np.zeros(0, np.int64),) * 2
        ru, ri = self._check_edges(removed) if removed is not None else (np.zeros(0, np.int64),) * 2
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
            row = set(self.user_items(u).tolist())
            if (new := (row | plus) - minus) != row:
                user_items[u] = np.array(sorted(new), dtype=np.int64)
        for i, (plus, minus) in by_item.items():
            row = set(self.item_users(i).tolist())
            if (new := (row | plus) - minus) != row:
                item_users[i] = np.array(sorted(new), dtype=np.int64)
        if not user_items:
            return None
        # An item's co-occurrence row can change only if one of its users (before or after) changed.
        affected = np.zeros(self.n_items, dtype=bool)
        for u, new_items in user_items.items():
            affected[self.user_items(u)] = True
            affected[new_items] = True
        return _Mods(user_items=user_items, item_users=item_users, affected=affected)

    def _items_of(self, users: np.ndarray, mods: _Mods | None) -> tuple[np.ndarray, np.ndarray]:
        """(owner position, item) pairs for the items of each user in ``users`` (edge changes applied)."""
        return _rows_with_overrides(self.ui, users, None if mods is None else mods.user_items)

    def _users_of(self, items: np.ndarray, mods: _Mods | None) -> tuple[np.ndarray, np.ndarray]:
        return _rows_with_overrides(self.iu, items, None if mods is None else mods.item_users)

    def _compute_cooc(self, items: np.ndarray, mods: _Mods | None) -> np.ndarray:
        """Bitset rows (len(items) x words) of the items within 2 hops of each item, itself included."""
        w = self._n_words
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
        out = np.empty((items.size, self._n_words), dtype=np.uint64)
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
        w = self._n_words
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
        row_bytes = 8 * self._n_words
        deg = self.user_degree()
        chunks: list[list[int]] = []
        cur: list[int] = []
        used = 0
        for k, s in enumerate(sets):
            users = s[s < self.n_users]
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
        users = uniq[uniq < self.n_users]
        items = uniq[uniq >= self.n_users] - self.n_users
        ub = self._user_balls(users, list(range(1, r_user + 1, 2)), mods) if users.size else {}
        ib = self._item_balls(items, list(range(0, r_item + 1, 2)), mods) if items.size else {}
        out = []
        for s in sets:
            q, inv = np.unique(s, return_inverse=True)
            is_user = q < self.n_users
            iu_, ii_ = np.flatnonzero(is_user), np.flatnonzero(~is_user)
            i_ids = q[ii_] - self.n_users
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


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npy(path: Path, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _count_ids(ids: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids and their multiplicities; bincount when dense enough, otherwise a sort."""
    if ids.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if ids.size * 16 >= size:
        counts = np.bincount(ids, minlength=size)
        uniq = np.flatnonzero(counts)
        return uniq.astype(np.int64), counts[uniq].astype(np.float32)
    uniq, counts = np.unique(ids, return_counts=True)
    return uniq.astype(np.int64), counts.astype(np.float32)


def _is_single(edges: EdgesArg) -> bool:
    """One ``(users, items)`` tuple for every set; a per-set form is a list."""
    return isinstance(edges, tuple)


def _per_set(edges: EdgesArg, n: int, name: str) -> list[Edges | None]:
    if edges is None:
        return [None] * n
    if _is_single(edges):
        return [edges] * n  # type: ignore[list-item]
    if not isinstance(edges, list):
        raise ValueError(f"{name}: pass a (users, items) tuple for all sets or a list with one entry per set")
    if len(edges) != n:
        raise ValueError(f"{name}: got {len(edges)} per-set entries for {n} node sets")
    return edges  # type: ignore[return-value]


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

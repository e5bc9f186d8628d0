"""The user–item train graph: neighbourhoods for prompts, hop distances for the attention bias, save / load.

Global node ids: users ``0..U-1``, items ``U..U+I-1`` (``graph.item_node(i) = U + i``). The graph is built
from **train** edges only. Everything here is numpy/scipy: no dense (U+I)^2 array is ever built. The
hop-distance BFS and its caches are :mod:`graphprompt.hops`; the graph answers through its engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import durable as atomic
from graphprompt.hops import Edges, HopDistances

FORMAT_VERSION = 1


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

    def __init__(self, ui: sp.csr_matrix, time: np.ndarray | None = None):
        self.ui: sp.csr_matrix = ui
        # per edge (aligned with ui.indices): its position in the user's time line, or None when unknown
        self.time = time
        self.n_users, self.n_items = ui.shape
        self.iu: sp.csr_matrix = ui.T.tocsr()
        self.iu.sort_indices()
        self.hops = HopDistances(self)  # builds nothing until the first distance query
        self._deg_u: np.ndarray | None = None
        self._deg_i: np.ndarray | None = None

    # ---------------------------------------------------------------- building
    @classmethod
    def from_matrix(
        cls, train: sp.spmatrix | sp.sparray | np.ndarray, times: sp.spmatrix | None = None
    ) -> BipartiteGraph:
        """From a users × items matrix; every non-zero entry is an edge (values are ignored). ``times``
        (``PreparedDataset.times``: positive time ranks at every edge and possibly elsewhere) gives each
        user's items their time order."""
        if not sp.issparse(train) and np.ndim(train) != 2:
            raise ValueError(f"train matrix must be 2-D users x items, got shape {np.shape(train)}")
        m = sp.csr_matrix(train, copy=True)
        m.sum_duplicates()
        m.eliminate_zeros()
        m = sp.csr_matrix((np.ones(m.nnz, dtype=np.float32), m.indices, m.indptr), shape=m.shape)
        m.sort_indices()
        if times is None:
            return cls(m)
        t = sp.csr_matrix(m.multiply(sp.csr_matrix(times)))
        t.sort_indices()
        if t.shape != m.shape or t.nnz != m.nnz or not np.array_equal(t.indices, m.indices):
            raise ValueError("times must hold a positive time rank at every edge of the train matrix")
        return cls(m, t.data.astype(np.float64))

    @property
    def has_time(self) -> bool:
        return self.time is not None

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

    def user_items_in_time(self, u: int) -> np.ndarray:
        """The user's train items oldest first (ascending by index when the graph has no time order)."""
        items = self.user_items(u)
        if self.time is None:
            return items
        t = self.time[self.ui.indptr[u] : self.ui.indptr[u + 1]]
        return items[np.argsort(t, kind="stable")]

    def time_lines(self) -> list[np.ndarray]:
        """Every user's train items oldest first (:meth:`user_items_in_time`; what the transitions count)."""
        return [self.user_items_in_time(u) for u in range(self.n_users)]

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
            two, two_w = _top_k(cand, self.two_hop_weight(cand, c, item_norm), n_items)
        else:
            two, two_w = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return Neighbourhood(hist, co_users, co_w, two, two_w, user=None if u is None else int(u))

    def two_hop_weight(self, items: np.ndarray, counts: np.ndarray, item_norm: float) -> np.ndarray:
        """The two-hop ranking weight of ``items``: their co-occurrence ``counts`` with a history divided by
        ``degree ** item_norm`` (float32; raw counts when ``item_norm`` is 0). Sums over history items: an
        item's weight is the sum of its per-history-item weights (service.explain reports those)."""
        counts = np.asarray(counts, dtype=np.float32)
        if not item_norm:
            return counts
        return counts / np.power(np.maximum(self.item_degree()[items], 1), item_norm).astype(np.float32)

    def _check_items(self, items: np.ndarray) -> np.ndarray:
        a = _index_array(items, self.n_items, "items", "item indices", "item index")
        _, first = np.unique(a, return_index=True)  # dedupe, keeping first-occurrence order
        return a[np.sort(first)]

    # ---------------------------------------------------------------- edges and distances
    def direct_edges(
        self, nodes: np.ndarray, extra_edges: Edges | None = None, removed_edges: Edges | None = None
    ) -> np.ndarray:
        """bool (n, n) adjacency among ``nodes`` (train graph + ``extra_edges`` - ``removed_edges``)."""
        nodes = self.check_nodes(nodes)
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
            eu, ei = self.check_edges(edges)
            hit = np.isin(eu, users) & np.isin(ei, items)  # only edges between nodes of this set matter
            for x, y in zip(eu[hit].tolist(), ei[hit].tolist(), strict=True):
                sub[np.ix_(users == x, items == y)] = value
        out[np.ix_(pu, pi)] = sub
        out[np.ix_(pi, pu)] = sub.T
        return out

    def hop_distances(
        self,
        nodes: np.ndarray,
        max_hops: int,
        extra_edges: Edges | None = None,
        removed_edges: Edges | None = None,
    ) -> np.ndarray:
        """int8 (n, n) hop distances among global node ids; ``max_hops + 1`` where farther, 0 on the diagonal.

        ``extra_edges = (user_idx, item_idx)`` adds live edges on top of the snapshot; ``removed_edges`` (same
        form) takes edges away (e.g. a user's held-out edges). Removal wins over addition. ``max_hops`` has no
        default here: it is ``BiasConfig.max_hops``, which the prompt builder and training pass on.
        """
        return self.hop_distances_many([nodes], max_hops, extra_edges, removed_edges)[0]

    def hop_distances_many(
        self,
        node_sets: Sequence[np.ndarray],
        max_hops: int,
        extra_edges: Edges | None = None,
        removed_edges: Edges | None = None,
        *,
        chunk_bytes: int = 16 * 2**20,
    ) -> list[np.ndarray]:
        """:meth:`hop_distances` for many small node sets at once, sharing BFS work (see ``HopDistances``)."""
        return self.hops.many(node_sets, max_hops, extra_edges, removed_edges, chunk_bytes=chunk_bytes)

    # ---------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``ui.indptr.npy``, ``ui.indices.npy`` and ``shape.json`` (no pickle) into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        atomic.save_npy(out / "ui.indptr.npy", self.ui.indptr.astype(np.int64))
        atomic.save_npy(out / "ui.indices.npy", self.ui.indices.astype(np.int32))
        meta = {
            "format_version": FORMAT_VERSION,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_edges": self.n_edges,
        }
        if self.time is not None:
            atomic.save_npy(out / "ui.time.npy", self.time.astype(np.float64))
        atomic.write_bytes(out / "shape.json", json.dumps(meta).encode())
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
        times = None
        if (p / "ui.time.npy").exists():  # graphs saved before the time order was kept have none
            t = np.load(p / "ui.time.npy", allow_pickle=False)
            if t.shape != indices.shape or (t.size and t.min() <= 0):
                raise ValueError(f"{p}: ui.time.npy does not hold a positive rank per edge")
            times = sp.csr_matrix((t, indices, indptr), shape=(n_users, n_items))
        return cls.from_matrix(ui, times)

    # ---------------------------------------------------------------- input checks (shared with the engine)
    def check_nodes(self, nodes: np.ndarray) -> np.ndarray:
        return _index_array(nodes, self.n_nodes, "nodes", "global node ids", "node id")

    def check_edges(self, edges: Edges) -> tuple[np.ndarray, np.ndarray]:
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


def _index_array(values, bound: int, name: str, kind: str, one: str) -> np.ndarray:
    """``values`` as a 1-D int64 array of indices in [0, bound), or a ValueError naming what is wrong."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of {kind}, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integer {kind}, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= bound:
        raise ValueError(f"{one} out of range [0, {bound}): min {a.min()}, max {a.max()}")
    return a.astype(np.int64)

"""The user–item train graph: neighbourhoods for prompts and hop distances for the attention bias.

Global node ids: users ``0..U-1``, items ``U..U+I-1`` (``graph.item_node(i) = U + i``). The graph is built
from **train** edges only. Everything here is numpy/scipy: no dense (U+I)^2 array is ever built.

Hop distances among a small node set use *bounded* BFS run for all sources at once with sparse products, and a
min-plus trick so that one ordinary sparse product yields all pairwise distances. With ``eps = 2**-b``, row
``x`` of ``V_r = e_x (I + eps*A)**r`` holds, for every node ``z`` within ``r`` hops, ``sum_k C(r,k) eps**k
walks_k(x,z)``, whose leading power of ``eps`` is ``d(x, z)``. Then ``V_a(x) . V_b(y) = e_x (I + eps*A)**(a+b)
e_y`` (A is symmetric), whose leading power is ``d(x, y)`` whenever ``d(x, y) <= a + b``: it is read back by
rounding ``-log2(value) / b``, with ``b`` large enough that walk counts cannot shift the exponent by half a
step. Radius ``floor(H/2)`` balls from every node give all distances up to ``2*floor(H/2)``; for odd ``H``
(odd distances only join a user and an item) one more hop is taken on the cheaper node type of each set.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
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
_PACK_MAGIC = b"EGNB"
_PACK_VERSION = 1
# magic, version, user (-1 = none), len(items), len(co_users), len(two_hop_items)
_PACK_HEADER = struct.Struct("<4sBqIII")


@dataclass
class Neighbourhood:
    """A user's graph neighbourhood as the prompt builder and the service cache see it.

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

    def pack(self) -> bytes:
        """Compact binary form (header + little-endian int32 ids and float32 weights); no pickle."""
        if len(self.co_users) != len(self.co_user_weight) or len(self.two_hop_items) != len(
            self.two_hop_weight
        ):
            raise ValueError("Neighbourhood: ids and weights differ in length")
        ids = [np.asarray(a, dtype=np.int64) for a in (self.items, self.co_users, self.two_hop_items)]
        for a in ids:
            if a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
                raise ValueError("Neighbourhood: ids must lie in [0, 2**31) to pack")
        header = _PACK_HEADER.pack(
            _PACK_MAGIC, _PACK_VERSION, -1 if self.user is None else int(self.user), *(len(a) for a in ids)
        )
        return b"".join(
            [
                header,
                ids[0].astype("<i4").tobytes(),
                ids[1].astype("<i4").tobytes(),
                np.asarray(self.co_user_weight, dtype="<f4").tobytes(),
                ids[2].astype("<i4").tobytes(),
                np.asarray(self.two_hop_weight, dtype="<f4").tobytes(),
            ]
        )

    @classmethod
    def unpack(cls, data: bytes) -> Neighbourhood:
        """Inverse of :meth:`pack`; raises ``ValueError`` on anything that is not a packed neighbourhood."""
        if len(data) < _PACK_HEADER.size:
            raise ValueError(f"packed neighbourhood too short ({len(data)} bytes)")
        magic, version, user, n_items, n_users, n_two = _PACK_HEADER.unpack_from(data)
        if magic != _PACK_MAGIC:
            raise ValueError("not a packed neighbourhood (bad magic)")
        if version != _PACK_VERSION:
            raise ValueError(f"packed neighbourhood version {version} != {_PACK_VERSION}")
        expected = _PACK_HEADER.size + 4 * (n_items + 2 * n_users + 2 * n_two)
        if len(data) != expected:
            raise ValueError(f"packed neighbourhood has {len(data)} bytes, header says {expected}")
        off = _PACK_HEADER.size
        parts = []
        for n, dt in ((n_items, "<i4"), (n_users, "<i4"), (n_users, "<f4"), (n_two, "<i4"), (n_two, "<f4")):
            parts.append(np.frombuffer(data, dtype=dt, count=n, offset=off))
            off += 4 * n
        ids_dtype = np.int64
        return cls(
            items=parts[0].astype(ids_dtype),
            co_users=parts[1].astype(ids_dtype),
            co_user_weight=parts[2].astype(np.float32),
            two_hop_items=parts[3].astype(ids_dtype),
            two_hop_weight=parts[4].astype(np.float32),
            user=None if user < 0 else int(user),
        )

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

    def __init__(self, ui: sp.csr_matrix):
        self.ui: sp.csr_matrix = ui
        self.n_users, self.n_items = ui.shape
        self.iu: sp.csr_matrix = ui.T.tocsr()
        self.iu.sort_indices()
        self._step: tuple[int, sp.csr_matrix] | None = None
        self._walks: list[np.ndarray] | None = None

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
        return np.diff(self.ui.indptr)

    def item_degree(self) -> np.ndarray:
        return np.diff(self.iu.indptr)

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
        self, u: int | None, items: np.ndarray | None = None, *, n_users: int = 20, n_items: int = 20
    ) -> Neighbourhood:
        """First-order items, top second-order users and top two-hop items of a user.

        ``items`` replaces the user's train items when given (pass live history, e.g. train items plus new
        interactions); with ``u=None`` (a user the graph does not know) ``items`` is required. Second-order
        users are counted over ``items`` and exclude ``u``; two-hop item counts are co-occurrences with
        ``items`` over all those users (so ``u``'s own train row never counts), and exclude ``items``
        themselves.
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
            two, two_w = _top_k(cand[keep], c[keep], n_items)
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
        max_ball_nnz: int = 8_000_000,
    ) -> list[np.ndarray]:
        """:meth:`hop_distances` for many small node sets at once (training builds many prompts per batch).

        Sets are grouped into chunks whose BFS balls (estimated from walk counts) fit ``max_ball_nnz`` stored
        entries; within a chunk every distinct node's BFS runs once, so nodes shared between prompts (popular
        items, the same user) cost once. ``extra_edges`` / ``removed_edges``: one ``(users, items)`` pair for
        all sets, or a list with one pair (or None) per set; sets with their own modifications are computed
        one by one.
        """
        if not isinstance(max_hops, int | np.integer) or not 1 <= max_hops <= 120:
            raise ValueError(f"max_hops must be an int in [1, 120], got {max_hops!r}")
        sets = [self._check_nodes(s) for s in node_sets]
        extra = _per_set(extra_edges, len(sets), "extra_edges")
        removed = _per_set(removed_edges, len(sets), "removed_edges")
        shared_mods = not (isinstance(extra_edges, list) or isinstance(removed_edges, list))
        out: list[np.ndarray | None] = [None] * len(sets)
        if not sets:
            return []
        if shared_mods:
            n_added = 0 if extra[0] is None else len(extra[0][0])
            bits, snap = self._bits(max_hops, n_added)
            mods = self._modifications(extra[0], removed[0], bits)
            for chunk in self._chunks(sets, max_hops, max_ball_nnz):
                dists = self._distances_chunk([sets[k] for k in chunk], max_hops, bits, snap, mods)
                for k, d in zip(chunk, dists, strict=True):
                    out[k] = d
        else:
            for k, s in enumerate(sets):
                bits, snap = self._bits(max_hops, 0 if extra[k] is None else len(extra[k][0]))
                mods = self._modifications(extra[k], removed[k], bits)
                out[k] = self._distances_chunk([s], max_hops, bits, snap, mods)[0]
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

    @property
    def adjacency(self) -> sp.csr_matrix:
        """Symmetric (U+I) x (U+I) 0/1 adjacency (float32), 2 x edges entries; built on each call."""
        return sp.bmat([[None, self.ui], [self.iu, None]], format="csr", dtype=np.float32)

    def warm(self, max_hops: int = 5) -> BipartiteGraph:
        """Build the lazily built BFS structures now (walk counts, step matrix), e.g. when a service loads."""
        self._step_matrix(self._bits(max_hops, 0)[0])
        return self

    def _walk_counts(self) -> list[np.ndarray]:
        """Number of walks of length 1, 2, 3 from every node: cheap upper bounds on BFS layer sizes."""
        if self._walks is None:
            du, di = self.user_degree().astype(np.float64), self.item_degree().astype(np.float64)
            w2u, w2i = self.ui @ di, self.iu @ du
            self._walks = [
                np.concatenate([du, di]),
                np.concatenate([w2u, w2i]),
                np.concatenate([self.ui @ w2i, self.iu @ w2u]),
            ]
        return self._walks

    def _bits(self, max_hops: int, n_added: int) -> tuple[int, bool]:
        """Exponent step ``b`` of the distance encoding, and whether BFS layers must be snapped each step.

        Without snapping, the pair value is ``sum_k C(R, k) eps**k walks_k`` (eps = 2**-b, R <= max_hops); the
        leading coefficient must stay below ``2**(b/2)`` for rounding to recover k, and ``eps**max_hops`` must
        stay a normal float64. Where walk counts are too large for that (huge hubs, large max_hops), every
        layer is snapped to exact ``eps**distance`` values, which bounds the coefficient by the node count
        instead.
        """
        du = float(self.user_degree().max(initial=0) + n_added)
        di = float(self.item_degree().max(initial=0) + n_added)
        hi, lo = max(du, di, 1.0), max(min(du, di), 1.0)
        log_walks = ((max_hops + 1) // 2) * math.log2(hi) + (max_hops // 2) * math.log2(lo)
        b = math.ceil(2 * (max_hops + 1 + log_walks)) + 2
        if b * max_hops <= 1000:
            return b, False
        b = math.ceil(2 * (math.log2(self.n_nodes + 1) + max_hops + 1)) + 2
        if b * max_hops <= 1000:
            return b, True
        raise ValueError(f"max_hops={max_hops} is too large for a graph of {self.n_nodes} nodes")

    def _step_matrix(self, bits: int) -> sp.csr_matrix:
        """``I + 2**-bits * A`` (float64, cached for the last ``bits`` used): one BFS step for all sources."""
        if self._step is None or self._step[0] != bits:
            self._step = None  # free the old one before building the next
            adj = self.adjacency.astype(np.float64)
            adj.data *= math.ldexp(1.0, -bits)
            step = (adj + sp.identity(self.n_nodes, dtype=np.float64, format="csr")).tocsr()
            step.sort_indices()
            self._step = (bits, step)
        return self._step[1]

    def _modifications(self, extra: Edges | None, removed: Edges | None, bits: int) -> _Mods | None:
        """Edge changes as matrices that keep every BFS step a sum of non-negative terms (no cancellation)."""
        if extra is None and removed is None:
            return None
        n, nu = self.n_nodes, self.n_users
        eps = math.ldexp(1.0, -bits)

        def sym(eu: np.ndarray, ei: np.ndarray) -> sp.csr_matrix:
            r = np.concatenate([eu, ei + nu])
            c = np.concatenate([ei + nu, eu])
            m = sp.csr_matrix((np.ones(r.size), (r, c)), shape=(n, n))
            m.sum_duplicates()
            m.data[:] = 1.0
            return m

        eu = ei = ru = ri = np.zeros(0, np.int64)
        if extra is not None:
            eu, ei = self._check_edges(extra)
            new = np.asarray(self.ui[eu, ei]).reshape(-1) == 0 if eu.size else np.zeros(0, bool)
            eu, ei = eu[new], ei[new]
        if removed is not None:
            ru, ri = self._check_edges(removed)
        added = sym(eu, ei)
        rem = sym(ru, ri)
        touched = np.zeros(n, dtype=bool)
        touched[rem.indices] = True  # nodes with a removed edge (rem is symmetric)
        # Rows of touched nodes are rebuilt exactly as I + eps * (A + added - removed), clipped to 0/1 edges,
        # so a removed edge is absent rather than subtracted (subtraction would leave float residue that reads
        # as a path).
        t_idx = np.flatnonzero(touched)
        if t_idx.size:
            sel = sp.csr_matrix((np.ones(t_idx.size), (t_idx, t_idx)), shape=(n, n))
            rows = sel @ (self.adjacency.astype(np.float64) + added)
            rows.data = np.minimum(rows.data, 1.0)
            rows = (rows - sel @ rem).tocsr()
            rows.data = np.maximum(rows.data, 0.0)
            rows.eliminate_zeros()
            rows.data *= eps
            fix = (rows + sel).tocsr()
        else:
            fix = sp.csr_matrix((n, n), dtype=np.float64)
        keep = sp.diags((~touched).astype(np.float64)).tocsr()
        added_rest = keep @ added
        added_rest.data *= eps
        return _Mods(added=added_rest.tocsr(), fix=fix, keep=keep, n_added=int(eu.size))

    def _chunks(self, sets: list[np.ndarray], max_hops: int, budget: int) -> list[list[int]]:
        """Group set indices so the estimated BFS-ball entries of each group fit ``budget``."""
        walks = self._walk_counts()
        half = (max_hops + 1) // 2
        n_users, n_items = self.n_users, self.n_items
        chunks: list[list[int]] = []
        cur: list[int] = []
        seen: set[int] = set()
        used = 0.0
        for k, s in enumerate(sets):
            new = [x for x in np.unique(s).tolist() if x not in seen]
            est = 0.0
            if new:
                nodes = np.asarray(new)
                user = nodes < n_users
                est = float(len(new))
                for r in range(1, half + 1):
                    w = walks[min(r, 3) - 1][nodes]
                    # layer r holds items for users when r is odd, users when even (and vice versa for items)
                    cap = np.where(user == (r % 2 == 1), n_items, n_users)
                    est += float(np.minimum(w, cap).sum())
            if cur and used + est > budget:
                chunks.append(cur)
                cur, seen, used = [], set(), 0.0
                new = np.unique(s).tolist()
            cur.append(k)
            seen.update(new)
            used += est
        if cur:
            chunks.append(cur)
        return chunks

    def _bfs_step(
        self, v: sp.csr_matrix, step: sp.csr_matrix, mods: _Mods | None, bits: int, snap: bool
    ) -> sp.csr_matrix:
        """``v @ (I + eps * A_modified)``: each row's BFS ball grows by one hop."""
        if mods is None:
            out = v @ step
        else:
            vk = v @ mods.keep
            out = vk @ step
            if mods.added.nnz:
                out = out + vk @ mods.added
            if mods.fix.nnz:
                out = out + (v - vk) @ mods.fix
            out = sp.csr_matrix(out)
            out.eliminate_zeros()
        if snap:
            out.data = np.ldexp(1.0, -bits * np.rint(-np.log2(out.data) / bits).astype(np.int64))
        return out

    def _distances_chunk(
        self, sets: list[np.ndarray], max_hops: int, bits: int, snap: bool, mods: _Mods | None
    ) -> list[np.ndarray]:
        """Distances for each set; every distinct node's BFS runs once for the whole chunk."""
        far = max_hops + 1
        uniq = np.unique(np.concatenate(sets)) if sets else np.zeros(0, np.int64)
        if uniq.size == 0:
            return [np.zeros((0, 0), np.int8) for _ in sets]
        n = uniq.size
        step = self._step_matrix(bits)
        v = sp.csr_matrix((np.ones(n), (np.arange(n), uniq)), shape=(n, self.n_nodes))
        for _ in range(max_hops // 2):
            v = self._bfs_step(v, step, mods, bits, snap)
        pos_sets = [np.searchsorted(uniq, s) for s in sets]
        is_user = uniq < self.n_users
        side: list[np.ndarray | None] = [None] * len(sets)  # per set: positions that take the extra hop
        x3 = None
        row3 = np.full(n, -1, dtype=np.int64)
        if max_hops % 2 == 1:
            # Odd distances join a user and an item, so one more hop on ONE side of each such pair suffices:
            # per set, the node type whose expansion is cheaper (sum of degrees over its current balls).
            cost = v @ self._walk_counts()[0]
            for k, p in enumerate(pos_sets):
                u, i = np.unique(p[is_user[p]]), np.unique(p[~is_user[p]])
                if u.size and i.size:
                    side[k] = u if cost[u].sum() <= cost[i].sum() else i
            need = np.unique(np.concatenate([q for q in side if q is not None] or [np.zeros(0, np.int64)]))
            if need.size:
                x3 = self._bfs_step(v[need], step, mods, bits, snap)
                row3[need] = np.arange(need.size)
        out = []
        for k, p in enumerate(pos_sets):
            q, inv = np.unique(p, return_inverse=True)
            vq = v[q]
            d = _decode((vq @ vq.T).toarray(), bits, far)  # exact up to 2 * radius hops
            sq = side[k]
            if sq is not None and x3 is not None:
                a = np.searchsorted(q, sq)  # rows of d for the extra-hop side
                b = np.flatnonzero(is_user[q] != is_user[sq[0]])  # the other node type
                odd = _decode((x3[row3[sq]] @ vq[b].T).toarray(), bits, far)
                block = np.minimum(d[np.ix_(a, b)], odd)
                d[np.ix_(a, b)] = block
                d[np.ix_(b, a)] = block.T
            out.append(d[np.ix_(inv, inv)])
        return out


@dataclass
class _Mods:
    """Live edge changes: ``v @ step`` becomes ``(v keep) @ (step + added) + (v - v keep) @ fix``."""

    added: sp.csr_matrix  # eps * added edges, rows of nodes without removed edges
    fix: sp.csr_matrix  # exact rows I + eps * A_modified for nodes that lost an edge
    keep: sp.csr_matrix  # diagonal 0/1: nodes without removed edges
    n_added: int


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


def _decode(prod: np.ndarray, bits: int, far: int) -> np.ndarray:
    """Leading exponent of each ``sum_k c_k 2**(-bits*k)`` (rounding absorbs c_k), capped at ``far``."""
    out = np.full(prod.shape, far, dtype=np.int8)
    pos = prod > 0
    if pos.any():
        d = np.rint(-np.log2(prod[pos]) / bits)
        out[pos] = np.minimum(d, far).astype(np.int8)
    return out


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

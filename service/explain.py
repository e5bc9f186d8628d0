"""Why an item was recommended (``explain: true``): up to three reasons per item, from the graph the prompt
was built on (the version's train graph) and the user's history (train + live + recent items).

- ``co_occurrence``: a history item that other users chose together with the item. ``count`` is the number of
  such users (the user's own train row never counts, as in the prompt's neighbourhood); ``strength`` is that
  count divided by ``degree(item) ** two_hop_norm``, the candidate prior's two-hop weight
  (``BipartiteGraph.two_hop_weight``) contributed by this history item: an item's weight as a prompt
  candidate is the sum of these over the history it was built from.
- ``co_users``: the share of the prompt's second-order users (the users sharing most items with this user)
  who chose the item.
- ``similar_text``: a new catalogue item (no interactions yet), recommended through its text: the user's
  history items whose text is most similar (the history affinity that scored it), then its text's nearest
  known item (``in_history`` says which).

This runs on the event loop of every request that asks for it, so it is built for cost: the co-occurrence
counts of an answer's (history item, recommended item) pairs are one binary search in the version's
:class:`PairCounts` (built once per version at load), the co-users' share two more, and the reasons of a
returning user's unchanged answer come from the version's :class:`ReasonCache`. Reasons name items by index;
the route turns them into ids and titles.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from graphprompt.graph import BipartiteGraph
from service.config import REASON_CACHE_SIZE

MAX_REASONS = 3

Reason = dict[str, object]


def _row_entries(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``rows``, neighbour) of every stored entry of the CSR rows ``rows``."""
    starts = indptr[rows].astype(np.int64)
    lens = indptr[rows + 1].astype(np.int64) - starts
    owner = np.repeat(np.arange(rows.size, dtype=np.int64), lens)
    first = np.cumsum(lens) - lens  # where each row's entries start in the output
    pos = np.arange(owner.size, dtype=np.int64) + np.repeat(starts - first, lens)
    return owner, indices[pos].astype(np.int64)


# Most item pairs a PairCounts may hold (16 bytes each: a 256 MB ceiling). Amazon-beauty has 1.4 M (21.8 MiB,
# benchmarks/explain_bench.py); a graph past the ceiling is explained by the block product instead.
MAX_PAIRS = 16_000_000


class PairCounts:
    """The train graph's item-item co-occurrence counts (how many users chose both; no diagonal) as one
    sorted array of pair keys ``h * n_items + c`` and their counts, built once per served version.

    The counts of every (history item, recommended item) pair of an answer are then one binary search
    instead of the block product of :func:`co_occurrence` over the items' users: with the rest of the
    route, 215-300 us per explained answer against 264-465 us (``benchmarks/explain_bench.py``)."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, n_items: int) -> None:
        # a last key above every query, so a search never runs off the end (no clipping per call)
        self.keys = np.append(np.asarray(keys, dtype=np.int64), np.iinfo(np.int64).max)
        self.counts = np.append(np.asarray(counts, dtype=np.int64), 0)
        self.n_items = n_items

    @classmethod
    def build(cls, graph: BipartiteGraph, max_pairs: int = MAX_PAIRS) -> PairCounts | None:
        """None when the graph could hold more than ``max_pairs`` pairs (the bound is sum of squared user
        degrees, so a graph is judged before any work)."""
        deg = graph.user_degree().astype(np.int64)
        if int((deg * deg).sum()) > max_pairs:
            return None
        ui = graph.ui
        x = sp.csr_matrix((np.ones(ui.indices.size, np.int32), ui.indices, ui.indptr), shape=ui.shape)
        co = (x.T @ x).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        co.sort_indices()
        rows = np.repeat(np.arange(graph.n_items, dtype=np.int64), np.diff(co.indptr))
        return cls(rows * graph.n_items + co.indices, co.data, graph.n_items)

    def __call__(self, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``[len(history), len(items)]`` counts (int64, a new array)."""
        q = history[:, None] * self.n_items + items[None, :]
        pos = np.searchsorted(self.keys, q)
        return np.where(self.keys.take(pos) == q, self.counts.take(pos), 0)

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.counts.nbytes)


def indexed_co_occurrence(
    graph: BipartiteGraph,
    pairs: PairCounts,
    history: np.ndarray,
    items: np.ndarray,
    user: int | None,
    co_users: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`co_occurrence` returns, from the version's :class:`PairCounts`: the user's own train row
    is taken out of the pairs it holds both items of."""
    counts = pairs(history, items)
    if user is not None:
        ptr = graph.ui.indptr
        own = graph.ui.indices[ptr[user] : ptr[user + 1]]  # sorted (a CSR row)
        if own.size:
            both = np.concatenate([history, items])
            mine = own.take(np.searchsorted(own, both), mode="clip") == both
            counts -= np.multiply.outer(mine[: history.size], mine[history.size :])
    counts[history[:, None] == items[None, :]] = 0  # with exclude_seen off an item is no reason for itself
    return counts, _chosen_by(graph, items, co_users)


def _chosen_by(graph: BipartiteGraph, items: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Per item, how many of ``users`` chose it (float32, as the block product gives it): the users' rows
    are a few hundred items at most, so one sorted array and two binary searches count them."""
    ptr, idx = graph.ui.indptr, graph.ui.indices
    if users.size == 0:
        return np.zeros(items.size, dtype=np.float32)
    chosen = np.sort(np.concatenate([idx[ptr[v] : ptr[v + 1]] for v in users.tolist()]))
    n = np.searchsorted(chosen, items, "right") - np.searchsorted(chosen, items, "left")
    return n.astype(np.float32)


# Most elements of the dense 0/1 matrices one block of the co-occurrence product holds (4 MB of float32): an
# answer of 10 items is one block; k = 1000 or very popular items are split into several.
BLOCK = 1 << 20


def co_occurrence(
    graph: BipartiteGraph, history: np.ndarray, items: np.ndarray, user: int | None, co_users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``[len(history), len(items)]`` counts of train users other than ``user`` who chose both
    ``history[h]`` and ``items[c]``, and per item how many of ``co_users`` chose it.

    Without a :class:`PairCounts` (a graph too big for one): only users who chose one of the items can
    count, so both sides become 0/1 matrices over those users alone and a small matrix product gives the
    counts, block by block within ``BLOCK``."""
    counts = np.zeros((history.size, items.size), dtype=np.int64)
    chose = np.zeros(items.size, dtype=np.float32)
    h_own, h_users = _row_entries(graph.iu.indptr, graph.iu.indices, history)
    degree = graph.item_degree()[items]
    start = 0
    while start < items.size:
        stop, width = start + 1, int(degree[start]) + 1
        while stop < items.size and (width + degree[stop]) * (stop + 1 - start) <= BLOCK:
            width += int(degree[stop])
            stop += 1
        cols = slice(start, stop)
        chose[cols] = _block(graph, history, h_own, h_users, items[cols], user, co_users, counts[:, cols])
        start = stop
    counts[history[:, None] == items[None, :]] = 0  # with exclude_seen off an item is no reason for itself
    return counts, chose


def _block(
    graph: BipartiteGraph,
    history: np.ndarray,
    h_own: np.ndarray,
    h_users: np.ndarray,
    items: np.ndarray,
    user: int | None,
    co_users: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Fills ``out`` (a view of the counts' columns of ``items``); returns the co-user counts of ``items``."""
    c_own, c_users = _row_entries(graph.iu.indptr, graph.iu.indices, items)
    # Each of those users' row (0: none of them, stays empty), looked up directly: cheaper than a search per
    # history entry, and np.zeros costs no more than the pages it touches on big graphs. A user with several
    # of the items keeps the number of its last entry; the numbers of its other entries are rows left empty.
    row = np.zeros(graph.n_users, dtype=np.int64)
    row[c_users] = np.arange(1, c_users.size + 1)
    chose_item = np.zeros((c_users.size + 1, items.size), dtype=np.float32)
    chose_item[row[c_users], c_own] = 1.0
    chose = chose_item[row[co_users]].sum(axis=0)
    if user is not None:
        row[user] = 0  # the user's own train row never counts, as in the prompt's neighbourhood
    step = max(1, BLOCK // (c_users.size + 1))  # history rows per product
    for r0 in range(0, history.size, step):
        lo, hi = np.searchsorted(h_own, [r0, r0 + step])  # h_own is ascending: the rows' entries are a run
        chose_hist = np.zeros((min(step, history.size - r0), c_users.size + 1), dtype=np.float32)
        chose_hist[h_own[lo:hi] - r0, row[h_users[lo:hi]]] = 1.0
        out[r0 : r0 + step] = chose_hist @ chose_item  # float32 sums of 0/1: exact up to 2**24 users
    return chose


def graph_reasons(
    graph: BipartiteGraph,
    items: np.ndarray,
    history: np.ndarray,
    co_users: np.ndarray,
    *,
    user: int | None,
    item_norm: float,
    limit: int = MAX_REASONS,
    pairs: PairCounts | None = None,
) -> list[list[Reason]]:
    """Per item of ``items`` (best first), its graph reasons: the history items it co-occurs with most, then
    the share of ``co_users`` who chose it. Items the graph does not know (new catalogue items) get none.
    ``pairs``: the graph's :class:`PairCounts`, when it has one (the same counts, faster)."""
    out: list[list[Reason]] = [[] for _ in range(items.size)]
    known = np.flatnonzero((items >= 0) & (items < graph.n_items))
    history = history[(history >= 0) & (history < graph.n_items)]
    if known.size == 0 or history.size == 0 or limit <= 0:
        return out
    cand = items[known]
    if pairs is not None:
        counts, chose = indexed_co_occurrence(graph, pairs, history, cand, user, co_users)
    else:
        counts, chose = co_occurrence(graph, history, cand, user, co_users)
    # The pairs to report: per item its strongest history items (a newer one first on ties: the history is
    # oldest first), as many as the co-users reason leaves room for. Few pairs are non-zero, so one sort of
    # those and a walk over them beats a per-column top-k of the whole matrix.
    c_pos, h_pos = np.nonzero(counts.T)
    n = counts.T[c_pos, h_pos]
    order = np.lexsort((-h_pos, -n, c_pos))
    strength = graph.two_hop_weight(cand[c_pos], n, item_norm)
    room = (limit - (chose > 0)).tolist()
    rows = [out[k] for k in known.tolist()]
    for c, h, k, st in zip(
        c_pos[order].tolist(),
        history[h_pos[order]].tolist(),
        n[order].tolist(),
        strength[order].tolist(),
        strict=True,
    ):
        if room[c] > 0:
            room[c] -= 1
            rows[c].append({"kind": "co_occurrence", "item": h, "count": k, "strength": st})
    n_co = int(co_users.size)
    for c, k in zip(np.flatnonzero(chose).tolist(), chose[chose > 0].astype(np.int64).tolist(), strict=True):
        rows[c].append({"kind": "co_users", "share": k / n_co, "count": k, "co_users": n_co})
    return out


def similar_text_reason(item: int, similarity: float, in_history: bool = False) -> Reason:
    """A reason of a new catalogue item: a known item with similar text, and their cosine similarity."""
    reason: Reason = {"kind": "similar_text", "item": int(item), "similarity": float(similarity)}
    return reason | {"in_history": bool(in_history)}


def explain(
    graph: BipartiteGraph,
    items: np.ndarray,
    history: np.ndarray,
    co_users: np.ndarray,
    *,
    user: int | None,
    item_norm: float,
    similar: Mapping[int, Sequence[tuple[int, float, bool]]] | None = None,
    limit: int = MAX_REASONS,
    pairs: PairCounts | None = None,
) -> list[list[Reason]]:
    """Reasons for every recommended item: graph reasons for known items; for a new catalogue item
    (``similar`` maps its index to (known item, similarity, in the user's history) triples) its text
    reasons."""
    out = graph_reasons(
        graph, items, history, co_users, user=user, item_norm=item_norm, limit=limit, pairs=pairs
    )
    if not similar or limit <= 0:
        return out
    for pos, i in enumerate(items.tolist()):
        if i in similar:
            out[pos][:0] = [similar_text_reason(*s) for s in similar[i]]
            del out[pos][limit:]
    return out


class ReasonCache:
    """The reasons of recent answers, keyed by everything :func:`explain` reads (one per served version, so
    the graph is fixed; the caller's key holds the catalogue view, the items, the history and the co-users).
    Users come back (the user-vector cache exists for the same reason) and an unchanged history gives the
    same answer, so most explaining requests need no graph work. Event-loop only (no locking); bounded, least
    recently used out first. Entries are handed out as they are stored, so callers must not change them
    (the route serialises them straight away). ``hits`` and ``misses`` count lookups since it was made."""

    def __init__(self, size: int = REASON_CACHE_SIZE) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return found
        self.misses += 1
        found = compute()
        if self.size > 0:
            self._entries[key] = found
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return found

    def __len__(self) -> int:
        return len(self._entries)

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

The graph reasons of all k items come from a few vectorised joins over the graph's CSR arrays (no Python loop
over users or pairs): this runs on the event loop of every request that asks for it. Reasons name items by
index; the route turns them into ids and titles.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from graphprompt.graph import BipartiteGraph

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


# Most elements of the dense 0/1 matrices one block of the co-occurrence product holds (4 MB of float32): an
# answer of 10 items is one block; k = 1000 or very popular items are split into several.
BLOCK = 1 << 20


def co_occurrence(
    graph: BipartiteGraph, history: np.ndarray, items: np.ndarray, user: int | None, co_users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``[len(history), len(items)]`` counts of train users other than ``user`` who chose both
    ``history[h]`` and ``items[c]``, and per item how many of ``co_users`` chose it.

    Only users who chose one of the items can count, so both sides become 0/1 matrices over those users
    alone and a small matrix product gives the counts, block by block within ``BLOCK``."""
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


def _strongest(counts: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(item position, history position) of the pairs to report: per item its ``limit[item]`` largest
    counts above 0 (a newer history item first on ties: the history is oldest first), by item, then strongest
    first."""
    n_hist = counts.shape[0]
    key = counts * n_hist + np.arange(n_hist)[:, None]
    top = np.argsort(-key, axis=0)[: int(limit.max(initial=0))]
    best = np.take_along_axis(counts, top, axis=0)
    keep = (best > 0) & (np.arange(top.shape[0])[:, None] < limit[None, :])
    c_pos, rank = np.nonzero(keep.T)
    return c_pos, top[rank, c_pos]


def graph_reasons(
    graph: BipartiteGraph,
    items: np.ndarray,
    history: np.ndarray,
    co_users: np.ndarray,
    *,
    user: int | None,
    item_norm: float,
    limit: int = MAX_REASONS,
) -> list[list[Reason]]:
    """Per item of ``items`` (best first), its graph reasons: the history items it co-occurs with most, then
    the share of ``co_users`` who chose it. Items the graph does not know (new catalogue items) get none."""
    out: list[list[Reason]] = [[] for _ in range(items.size)]
    known = np.flatnonzero((items >= 0) & (items < graph.n_items))
    history = history[(history >= 0) & (history < graph.n_items)]
    if known.size == 0 or history.size == 0 or limit <= 0:
        return out
    cand = items[known]
    counts, chose = co_occurrence(graph, history, cand, user, co_users)
    c_pos, h_pos = _strongest(counts, limit - (chose > 0))
    n = counts[h_pos, c_pos]
    strength = graph.two_hop_weight(cand[c_pos], n, item_norm)
    for c, h, k, s in zip(
        c_pos.tolist(), history[h_pos].tolist(), n.tolist(), strength.tolist(), strict=True
    ):
        out[known[c]].append({"kind": "co_occurrence", "item": h, "count": k, "strength": s})
    for c in np.flatnonzero(chose).tolist():
        k = int(chose[c])
        out[known[c]].append(
            {"kind": "co_users", "share": k / co_users.size, "count": k, "co_users": int(co_users.size)}
        )
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
) -> list[list[Reason]]:
    """Reasons for every recommended item: graph reasons for known items; for a new catalogue item
    (``similar`` maps its index to (known item, similarity, in the user's history) triples) its text
    reasons."""
    out = graph_reasons(graph, items, history, co_users, user=user, item_norm=item_norm, limit=limit)
    for pos, i in enumerate(items.tolist()):
        if similar is not None and i in similar and limit > 0:
            out[pos][:0] = [similar_text_reason(*s) for s in similar[i]]
            del out[pos][limit:]
    return out


class ReasonCache:
    """The reasons of recent answers, keyed by everything :func:`explain` reads (one per served version, so
    the graph is fixed; the caller's key holds the catalogue view, the items, the history and the co-users).
    Users come back (the user-vector cache exists for the same reason) and an unchanged history gives the
    same answer, so most explaining requests need no graph work. Event-loop only (no locking); bounded, least
    recently used out first. Hands out copies: the route relabels reasons in place."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, list[list[Reason]]] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], list[list[Reason]]]) -> list[list[Reason]]:
        found = self._entries.get(key)
        if found is None:
            found = compute()
            if self.size > 0:
                self._entries[key] = found
                if len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return [[dict(r) for r in reasons] for reasons in found]

    def __len__(self) -> int:
        return len(self._entries)

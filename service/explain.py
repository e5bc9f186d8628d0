"""Why an item was recommended (``explain: true``): up to three reasons per item, from the graph the prompt
was built on (the version's train graph) and the user's history (train + live + recent items).

- ``co_occurrence``: a history item that other users chose together with the item. ``count`` is the number of
  such users (the user's own train row never counts, as in the prompt's neighbourhood); ``strength`` is that
  count divided by ``degree(item) ** two_hop_norm``, the candidate prior's two-hop weight
  (``BipartiteGraph.two_hop_weight``) contributed by this history item: an item's weight as a prompt
  candidate is the sum of these over the history it was built from.
- ``co_users``: the share of the prompt's second-order users (the users sharing most items with this user)
  who chose the item.
- ``similar_text``: a new catalogue item (no interactions yet), recommended through its text's nearest
  known item.

The graph reasons of all k items come from a few vectorised joins over the graph's CSR arrays (no Python loop
over users or pairs): this runs on the event loop of every request that asks for it. Reasons name items by
index; the route turns them into ids and titles.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def co_occurrence(
    graph: BipartiteGraph, history: np.ndarray, items: np.ndarray, user: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (history position, item position, count) with count > 0: how many train users other than
    ``user`` chose both ``history[h]`` and ``items[c]``. Both arrays hold known item indices, each unique."""
    iu = graph.iu
    h_own, h_users = _row_entries(iu.indptr, iu.indices, history)
    if user is not None:
        keep = h_users != user
        h_own, h_users = h_own[keep], h_users[keep]
    c_own, c_users = _row_entries(iu.indptr, iu.indices, items)
    order = np.argsort(c_users, kind="stable")
    c_own, c_users = c_own[order], c_users[order]
    # Join on the user: each history entry meets the item entries of its user (a run of the sorted array).
    lo = np.searchsorted(c_users, h_users, side="left")
    n = np.searchsorted(c_users, h_users, side="right") - lo
    total = int(n.sum())
    h_pos = np.repeat(h_own, n)
    c_pos = c_own[np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(total, dtype=np.int64)]
    pairs, count = np.unique(h_pos * items.size + c_pos, return_counts=True)
    return pairs // items.size, pairs % items.size, count


def co_user_counts(graph: BipartiteGraph, co_users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per item, how many of ``co_users`` have it among their train items (``items`` unique, known)."""
    _, chosen = _row_entries(graph.ui.indptr, graph.ui.indices, co_users)
    sorter = np.argsort(items)
    at = np.minimum(np.searchsorted(items, chosen, sorter=sorter), items.size - 1)
    hit = items[sorter[at]] == chosen
    return np.bincount(sorter[at[hit]], minlength=items.size)


def _strongest(h_pos: np.ndarray, c_pos: np.ndarray, count: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Indices of the pairs to report: per item, its ``limit[item]`` largest counts (a newer history item
    first on ties), ordered by item, then strongest first."""
    order = np.lexsort((-h_pos, -count, c_pos))
    c = c_pos[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    rank = np.arange(c.size) - np.repeat(starts, np.diff(np.r_[starts, c.size]))
    return order[rank < limit[c]]


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
    chose = co_user_counts(graph, co_users, cand) if co_users.size else np.zeros(cand.size, np.int64)
    h_pos, c_pos, count = co_occurrence(graph, history, cand, user)
    pick = _strongest(h_pos, c_pos, count, limit - (chose > 0))
    h_pos, c_pos, count = h_pos[pick], c_pos[pick], count[pick]
    strength = graph.two_hop_weight(cand[c_pos], count, item_norm)
    for c, h, n, s in zip(
        c_pos.tolist(), history[h_pos].tolist(), count.tolist(), strength.tolist(), strict=True
    ):
        out[known[c]].append({"kind": "co_occurrence", "item": h, "count": n, "strength": s})
    for c in np.flatnonzero(chose).tolist():
        n = int(chose[c])
        share = n / co_users.size
        out[known[c]].append({"kind": "co_users", "share": share, "count": n, "co_users": int(co_users.size)})
    return out


def similar_text_reason(nearest: int, similarity: float) -> Reason:
    """The reason of a new catalogue item: its text's nearest known item and their cosine similarity."""
    return {"kind": "similar_text", "item": int(nearest), "similarity": float(similarity)}


def explain(
    graph: BipartiteGraph,
    items: np.ndarray,
    history: np.ndarray,
    co_users: np.ndarray,
    *,
    user: int | None,
    item_norm: float,
    similar: Mapping[int, tuple[int, float]] | None = None,
    limit: int = MAX_REASONS,
) -> list[list[Reason]]:
    """Reasons for every recommended item: graph reasons for known items; for a new catalogue item
    (``similar`` maps its index to its nearest known item and their similarity) the similar-text reason."""
    out = graph_reasons(graph, items, history, co_users, user=user, item_norm=item_norm, limit=limit)
    for pos, i in enumerate(items.tolist()):
        if similar is not None and i in similar and limit > 0:
            out[pos].insert(0, similar_text_reason(*similar[i]))
            del out[pos][limit:]
    return out

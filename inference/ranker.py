"""Ranking a batch of user vectors: the FAISS top-k, minus each user's exclusions, merged exactly with the
candidate prior's boosts.

The candidate prior (docs/model.md) gives a non-negative score to each item a prompt names as a two-hop
candidate; :func:`candidate_boosts` turns the encoder's ``candidate_scores`` output into per-user (items,
boosts), and :meth:`Ranker.search` adds them to the inner-product scores without giving up exactness."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from model_store.index import ItemIndex, as_queries, search_any

Boost = tuple[np.ndarray, np.ndarray]  # (item indices int64, score boosts float32) of one user


def candidate_boosts(
    input_ids: np.ndarray,
    scores: np.ndarray | None,
    item_offset: int,
    history: Sequence[np.ndarray] | None = None,
) -> list[Boost] | None:
    """Per prompt row: (items, boosts) for the item tokens with a positive candidate score, minus that row's
    ``history`` (a recommendation never boosts what the user already has). None without candidate scores."""
    if scores is None:
        return None
    out = []
    for r in range(len(input_ids)):
        keep = (input_ids[r] >= item_offset) & (scores[r] > 0)
        items = input_ids[r, keep].astype(np.int64) - item_offset
        boost = scores[r, keep].astype(np.float32)
        if history is not None and len(history[r]):
            fresh = ~np.isin(items, history[r])
            items, boost = items[fresh], boost[fresh]
        out.append((items, boost))
    return out


def merge_boosts(a: Boost | None, b: Boost | None) -> Boost | None:
    """One user's two boosts as one (an item in both gets the sum: the ranker's merge adds duplicates)."""
    if a is None or not len(a[0]):
        return b if b is not None and len(b[0]) else a
    if b is None or not len(b[0]):
        return a
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])


class Ranker:
    """Top-k items per user from an index, leaving out each user's excluded items (e.g. already seen).

    Over-fetches ``k + len(exclude) + margin`` candidates and doubles the fetch for users still short, so
    exactly ``k`` items come back whenever the catalogue has ``k`` items outside the exclusion. If an
    approximate index cannot supply enough even at full fetch, ``item_embeddings`` (when given) fills in by
    exact scoring. Rows that the catalogue cannot fill are padded with id -1 and score -inf.
    """

    def __init__(
        self, index: ItemIndex | faiss.Index, item_embeddings: np.ndarray | None = None, margin: int = 32
    ) -> None:
        self.index = index
        self.n_items = int(index.ntotal)
        self.dim = int(index.dim if isinstance(index, ItemIndex) else index.d)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin
        self.item_embeddings = None
        if item_embeddings is not None:
            if item_embeddings.shape != (self.n_items, self.dim):
                raise ValueError(
                    f"item_embeddings shape {item_embeddings.shape} does not match the index "
                    f"({self.n_items}, {self.dim})"
                )
            self.item_embeddings = item_embeddings

    def search(
        self,
        user_vectors: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray | Sequence[int]] | None = None,
        boosts: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [B, k], scores float32 [B, k]) best first, excluded items never returned.

        ``boosts`` (one per user, or None) = (items, non-negative boosts) added to those items'
        inner-product scores: the candidate prior of the items a prompt names (``candidate_boosts`` in
        this module). The index's top-k merged with the boosted items, re-scored exactly, is the exact
        top-k of the boosted scores (an item outside both scores at most the k-th index score, which a boost
        only raises)."""
        q = as_queries(user_vectors, self.dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if boosts is not None and len(boosts) != len(q):
            raise ValueError(f"boosts has {len(boosts)} entries for {len(q)} user vectors")
        excl = self._exclusions(exclude, len(q))
        ids_out, scores_out = self._search(q, k, excl)
        if boosts is not None:
            self._apply_boosts(q, k, excl, boosts, ids_out, scores_out)
        return ids_out, scores_out

    def _apply_boosts(self, q, k, excl, boosts, ids_out, scores_out) -> None:
        """Merge each boosted row's index top-k with its boosted items, re-scored exactly, in one pass over
        the whole batch: (row, item) pairs are coded as ``row * n_items + item``, so one ``np.unique`` merges
        duplicates and one ``np.lexsort`` ranks every row (by score, ties to the smaller item id)."""
        if self.item_embeddings is None:
            raise ValueError("boosted search needs the item embeddings (Ranker(index, item_embeddings))")
        rows, items, extra = [], [], []
        for u, boost in enumerate(boosts):
            if boost is None or len(boost[0]) == 0:
                continue
            it, ex = np.asarray(boost[0], dtype=np.int64), np.asarray(boost[1], dtype=np.float32)
            in_range = not it.size or (it.min() >= 0 and it.max() < self.n_items)
            if it.shape != ex.shape or it.ndim != 1 or not in_range:
                raise ValueError(f"boosts[{u}]: items and boosts must be equal-length, items in range")
            if (ex < 0).any():
                raise ValueError(f"boosts[{u}]: boosts must be >= 0 (the merge is exact only then)")
            rows.append(u)
            items.append(it)
            extra.append(ex)
        if not rows:
            return
        n = np.int64(self.n_items)
        sizes = np.array([len(it) for it in items])
        row_of = np.repeat(np.asarray(rows, dtype=np.int64), sizes)
        b_codes = row_of * n + np.concatenate(items)
        b_extra = np.concatenate(extra)
        excl_codes = np.concatenate([u * n + excl[u] for u in rows])
        keep = ~np.isin(b_codes, excl_codes)
        top = ids_out[rows]
        t_codes = (np.asarray(rows, dtype=np.int64)[:, None] * n + top)[top >= 0]
        codes, inv = np.unique(np.concatenate([t_codes, b_codes[keep]]), return_inverse=True)
        bonus = np.bincount(inv, np.concatenate([np.zeros(t_codes.size), b_extra[keep]]), len(codes))
        row, item = np.divmod(codes, n)
        total = (np.einsum("nd,nd->n", self.item_embeddings[item], q[row]) + bonus).astype(np.float32)
        order = np.lexsort((item, -total, row))
        row, item, total = row[order], item[order], total[order]
        starts = np.searchsorted(row, row, side="left")
        rank = np.arange(row.size) - starts
        take = rank < k
        ids_out[rows] = -1
        scores_out[rows] = -np.inf
        ids_out[row[take], rank[take]] = item[take]
        scores_out[row[take], rank[take]] = total[take]

    def _search(self, q: np.ndarray, k: int, excl: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        b = len(q)
        want = np.array([min(k, self.n_items - e.size) for e in excl])
        ids_out = np.full((b, k), -1, dtype=np.int64)
        scores_out = np.full((b, k), -np.inf, dtype=np.float32)
        if self.n_items == 0:
            return ids_out, scores_out

        todo = np.arange(b)
        fetch = min(self.n_items, k + max(e.size for e in excl) + self.margin)
        n = np.int64(self.n_items)
        while todo.size:
            scores, ids = search_any(self.index, q[todo], fetch)
            # (row, item) coded as row * n_items + item: one isin call filters every row's exclusions
            excl_codes = np.concatenate([u * n + excl[u] for u in todo])
            keep = (ids >= 0) & ~np.isin(todo[:, None] * n + ids, excl_codes)
            rank = np.cumsum(keep, axis=1) - 1
            r, c = np.nonzero(keep & (rank < k))
            # a wider re-fetch of an approximate index may reorder: rewrite the whole row
            ids_out[todo] = -1
            scores_out[todo] = -np.inf
            ids_out[todo[r], rank[r, c]] = ids[r, c]
            scores_out[todo[r], rank[r, c]] = scores[r, c]
            todo = todo[np.minimum(keep.sum(1), k) < want[todo]]
            if fetch >= self.n_items:
                break
            fetch = min(self.n_items, fetch * 2)

        if todo.size and self.item_embeddings is not None:
            self._exact_fill(q, todo, k, excl, want, ids_out, scores_out)
        return ids_out, scores_out

    def _exclusions(self, exclude: Sequence[Any] | None, b: int) -> list[np.ndarray]:
        if exclude is None:
            return [np.empty(0, dtype=np.int64)] * b
        if len(exclude) != b:
            raise ValueError(f"exclude has {len(exclude)} entries for {b} user vectors; give one per user")
        out = []
        for i, e in enumerate(exclude):
            arr = np.unique(np.asarray(e, dtype=np.int64).ravel())
            if arr.size and (arr[0] < 0 or arr[-1] >= self.n_items):
                bad = arr[0] if arr[0] < 0 else arr[-1]
                raise ValueError(f"exclude[{i}] holds item id {bad}, outside 0..{self.n_items - 1}")
            out.append(arr)
        return out

    def _exact_fill(self, q, rows, k, excl, want, ids_out, scores_out) -> None:
        emb = self.item_embeddings
        for u in rows:
            s = np.asarray(emb @ q[u], dtype=np.float32)
            s[excl[u]] = -np.inf
            n = int(want[u])
            if n <= 0:
                continue
            top = np.argpartition(-s, n - 1)[:n] if n < s.size else np.arange(s.size)
            top = top[np.argsort(-s[top], kind="stable")][:n]
            ids_out[u] = -1
            scores_out[u] = -np.inf
            ids_out[u, :n] = top
            scores_out[u, :n] = s[top]

"""Items outside a version's FAISS index (catalogue items added after training), scored exactly and merged
into the index's top-k.

The index's answer is the exact top-k of the version's items (outside each user's exclusions, with the
candidate boosts). A side item's score is ``user_vector @ v`` like any item row. With the caller's ``bonus``
(the text model's history affinity, which plays the candidate prior's part for new items) the side items
are *ordered* by ``user_vector @ v + bonus`` and take the row's vector scores in that order: the bonus
decides which new items a user sees, the vectors how high new items reach among the known ones. (Added to
the scores directly, the affinity let untried items take a fifth of amazon-beauty's top-20 slots and cut
the known items' recall@20 by 10 %; reordered, the new items' share is what their vectors earn.) The top-k of
the union is therefore the top-k of (the index's top-k + every side item's exact score): an item outside
both lists scores at most the index's k-th. The side index is small (the items added since the last
retrain), so scoring all of it is one [B, D] x [D, n] product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


class SideIndex:
    """``codes`` int64 [n]: the ids side items carry in merged answers (chosen by the caller so they never
    collide with the version's item indices, e.g. ``n_items + j``); ``vectors`` float32 [n, D]; ``bags``
    [n, words] the items' text bags (the history affinity's input), when there is a text model."""

    def __init__(self, codes: np.ndarray, vectors: np.ndarray, bags: sp.csr_matrix | None = None) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(codes) != len(vectors) or codes.ndim != 1:
            raise ValueError(f"side index: {codes.shape} codes for vectors of shape {vectors.shape}")
        if bags is not None and bags.shape[0] != len(codes):
            raise ValueError(f"side index: {len(codes)} codes for {bags.shape[0]} text bags")
        self.codes, self.vectors, self.bags = codes, vectors, bags

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def empty(cls, dim: int) -> SideIndex:
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32))

    def merge(
        self,
        user_vectors: np.ndarray,
        ids: np.ndarray,
        scores: np.ndarray,
        exclude: Sequence[np.ndarray] | None = None,
        bonus: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) [B, k]: each row's top-k over its index answer (``ids``/``scores`` [B, k], best
        first, -1/-inf pads) and the side items outside ``exclude[row]`` (side codes), scored
        ``user_vector @ v``, or ordered by ``user_vector @ v + bonus`` [B, n] when a bonus is given (see
        the module docstring). Equal scores keep the index's items first."""
        if len(self) == 0:
            return ids, scores
        b, k = ids.shape
        side = np.asarray(user_vectors, dtype=np.float32) @ self.vectors.T  # [B, n]
        side_ids = np.broadcast_to(self.codes, side.shape).copy()
        for row, codes in enumerate(exclude or ()):
            if len(codes):
                hit = np.isin(self.codes, codes)
                side[row, hit], side_ids[row, hit] = -np.inf, -1
        if bonus is not None:  # excluded items stay -inf, last in both orders
            order = np.argsort(-(side + bonus), axis=1, kind="stable")
            reordered = np.empty_like(side)
            np.put_along_axis(reordered, order, -np.sort(-side, axis=1), axis=1)
            side = reordered
        if len(self) > k:  # only each row's k best side items can make its top-k
            part = np.argpartition(-side, k - 1, axis=1)[:, :k]
            side, side_ids = np.take_along_axis(side, part, 1), np.take_along_axis(side_ids, part, 1)
        all_scores = np.concatenate([scores, side], axis=1)
        all_ids = np.concatenate([ids, side_ids], axis=1)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        out_ids = np.take_along_axis(all_ids, order, 1)
        out_scores = np.take_along_axis(all_scores, order, 1).astype(np.float32)
        out_ids[~np.isfinite(out_scores)] = -1  # a row the catalogue cannot fill keeps its -1 pads
        return out_ids, out_scores

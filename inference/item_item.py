"""The ranker's item-item term: EASE's item-item weights (Steck, WWW 2019) cut to each item's strongest
neighbours, added to the model's scores as a per-user boost.

Why it is here: the candidate prior scores two-hop items by raw co-occurrence, and the transformer's 128-d dot
product blurs item-to-item structure; EASE's regression weights hold what both miss (they discount an item
that co-occurs with everything). On the same weights it adds +3.8 % (office) and +6.5 %
(beauty) test R@20 over the best blend without it, 3 seeds each (docs/model.md, "Results"). It is a
part of the exported model like the prior: fitted after fine-tuning on the train matrix, its weight
chosen on validation (0 turns it off), saved in the run and the version, served by the ranker.

**Transitions (opt-in, ``TrainConfig.transitions``).** The term can carry a second set of rows, ``T``: how
often item b came right after item a in the train users' time lines (:func:`transition_rows`). They score
what follows the user's *newest* items, not the whole history::

    t = Σ_{k<next_recent} 0.5^k T[h_{-1-k}]          (h in time order, newest last)
    boost += next_weight · σ(h) / σ(t) · t          on the user's top_n largest entries of t outside H

This is the order-aware signal a temporal split and a live service reward (a first-order Markov chain
scores validation R@20 .159 on office's temporal split against EASE's .093); its weight is chosen on
validation like the others, so a split where the order says nothing turns it off.

For a user with history ``H`` and user vector ``h``::

    e = Σ_{j∈H} W[j]                     (W: each row's ``keep`` largest positive EASE weights, so e ≥ 0)
    boost = weight · σ(h) / σ(e) · e     on the user's ``top_n`` largest entries of e outside H

``σ(h)`` is the spread of the user's inner-product scores over all items, sqrt(hᵀ Cov(E) h) (the prior's
``GraphGPT.score_spread``, here in numpy), ``σ(e)`` the spread of ``e`` over all items: one weight then fits
users whose scores sit on different scales (raw EASE scores moved office's validation by under 1 %). Boosts
are non-negative, so ``Ranker.search``'s merge with the index's top-k stays exact; training's evaluation
(``training.recipe.finetune.score_users``) and serving (``InferenceVersion.encode``) call the same
:meth:`ItemItem.boosts`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from inference.ranker import Boost, merge_boosts

ITEM_ITEM_DIR = "item_item"  # a folder of .npy arrays + params.json (the store never keeps .npz)
_ARRAYS = ("indptr", "indices", "data")


def score_spread(vectors: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """[B] std over all items of ``vectors @ E.T``: sqrt(hᵀ Cov(E) h) (``GraphGPT.score_spread``)."""
    var = np.einsum("bd,bd->b", vectors.astype(np.float64) @ cov, vectors)
    return np.sqrt(np.maximum(var, 0.0))


def item_covariance(item_table: np.ndarray) -> np.ndarray:
    """[D, D] population covariance of the item table's rows (float64)."""
    e = np.asarray(item_table, dtype=np.float64)
    e = e - e.mean(0, keepdims=True)
    return e.T @ e / max(len(e), 1)


def strongest_rows(weights: np.ndarray, keep: int) -> sp.csr_matrix:
    """Each row's ``keep`` largest positive entries of a dense [I, I] weight matrix, as float32 CSR."""
    n = weights.shape[0]
    keep = min(int(keep), max(n - 1, 0))
    if keep <= 0 or n == 0:
        return sp.csr_matrix((n, weights.shape[1]), dtype=np.float32)
    cols = np.argpartition(-weights, keep - 1, axis=1)[:, :keep]
    vals = np.take_along_axis(weights, cols, axis=1).astype(np.float32)
    rows = np.repeat(np.arange(n), keep)
    pos = vals.ravel() > 0
    m = sp.csr_matrix((vals.ravel()[pos], (rows[pos], cols.ravel()[pos])), shape=weights.shape)
    m.sort_indices()
    return m


def cut_rows(rows: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Each row's ``keep`` largest entries of a CSR matrix (the strongest of the strongest: cutting
    :func:`strongest_rows` at a larger ``keep`` gives the same rows as cutting the dense matrix)."""
    m = rows.tocsr()
    counts = np.diff(m.indptr)
    take = np.zeros(m.nnz, dtype=bool)
    for r in np.flatnonzero(counts > 0):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        if hi - lo <= keep:
            take[lo:hi] = True
        else:
            take[lo + np.argpartition(-m.data[lo:hi], keep - 1)[:keep]] = True
    row_ids = np.repeat(np.arange(m.shape[0]), counts)
    out = sp.csr_matrix((m.data[take], (row_ids[take], m.indices[take])), shape=m.shape, dtype=np.float32)
    out.sort_indices()
    return out


def transition_rows(sequences: Sequence[np.ndarray], n_items: int, keep: int) -> sp.csr_matrix:
    """[I, I] float32: row a counts how often item b came right after a in ``sequences`` (each one user's
    items in time order), each row cut to its ``keep`` largest counts."""
    heads = [np.asarray(s[:-1], dtype=np.int64) for s in sequences if len(s) > 1]
    tails = [np.asarray(s[1:], dtype=np.int64) for s in sequences if len(s) > 1]
    a = np.concatenate(heads) if heads else np.empty(0, dtype=np.int64)
    b = np.concatenate(tails) if tails else np.empty(0, dtype=np.int64)
    m = sp.csr_matrix((np.ones(len(a), dtype=np.float32), (a, b)), shape=(n_items, n_items))
    m.sum_duplicates()
    return cut_rows(m, keep)


def recent_matrix(histories: Sequence[np.ndarray], n_items: int, recent: int) -> sp.csr_matrix:
    """[B, I]: each history's ``recent`` newest known items (histories in time order, newest last),
    weighted 1, 0.5, 0.25, ... from the newest (an item seen twice keeps its newest weight); times the
    transition rows, the transitions' raw scores."""
    rows, cols, vals = [], [], []
    for r, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)
        h = h[(h >= 0) & (h < n_items)][::-1]
        _, first = np.unique(h, return_index=True)
        h = h[np.sort(first)][:recent]
        rows += [r] * len(h)
        cols += h.tolist()
        vals += (0.5 ** np.arange(len(h))).tolist()
    return sp.csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(len(histories), n_items))


@dataclass
class ItemItem:
    rows: sp.csr_matrix  # [I, I] float32, non-negative: item j's row holds the items it points to
    weight: float  # the blend weight, chosen on validation (0: the term is off)
    top_n: int  # boosted items per user
    item_cov: np.ndarray  # [D, D] covariance of the item table (for σ(h))
    params: dict  # how it was fitted (λ, keep, the validation grid), for the record
    fit_seconds: float | None = None  # wall time of the fit (not saved)
    next_rows: sp.csr_matrix | None = None  # [I, I] transition counts (transition_rows), or None
    next_weight: float = 0.0  # their blend weight, chosen on validation (0: off)
    next_recent: int = 3  # how many of the newest history items the transitions start from

    def __post_init__(self) -> None:
        if self.rows.shape[0] != self.rows.shape[1]:
            raise ValueError(f"item-item rows must be square, got {self.rows.shape}")
        if self.weight < 0 or self.top_n < 1:
            raise ValueError(f"item-item weight must be >= 0 and top_n >= 1, got {self.weight}, {self.top_n}")
        if self.rows.nnz and self.rows.data.min() < 0:
            raise ValueError("item-item rows must be non-negative (the ranker's merge is exact only then)")
        if self.next_weight < 0 or self.next_recent < 1:
            raise ValueError(
                f"next_weight must be >= 0 and next_recent >= 1, got {self.next_weight}, {self.next_recent}"
            )
        if self.next_rows is not None and self.next_rows.shape != self.rows.shape:
            raise ValueError(f"transition rows {self.next_rows.shape} != item-item rows {self.rows.shape}")

    @property
    def active(self) -> bool:
        """Whether the term adds anything (either part with a weight above 0)."""
        return self.weight > 0 or (self.next_rows is not None and self.next_weight > 0)

    @property
    def n_items(self) -> int:
        return self.rows.shape[0]

    def cut(self, keep: int) -> ItemItem:
        """This term with each row cut to its ``keep`` largest weights."""
        return replace(self, rows=cut_rows(self.rows, keep), params={**self.params, "keep": int(keep)})

    def history_matrix(self, histories: Sequence[np.ndarray]) -> sp.csr_matrix:
        """[B, I] 0/1 rows of each history's known items (items added after the version are left out)."""
        cols = [np.unique(np.asarray(h, dtype=np.int64)) for h in histories]
        cols = [c[(c >= 0) & (c < self.n_items)] for c in cols]
        indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])])
        indices = np.concatenate(cols) if cols else np.empty(0, dtype=np.int64)
        data = np.ones(len(indices), dtype=np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(histories), self.n_items))

    def boosts(
        self,
        vectors: np.ndarray,
        histories: Sequence[np.ndarray],
        weight: float | None = None,
        next_weight: float | None = None,
    ) -> list[Boost]:
        """Per user: (items, boosts) of the term, history items left out (``weight`` / ``next_weight``
        override the fitted ones, e.g. while a grid is searched). ``histories`` in time order (newest last)
        where the transitions are on."""
        w = self.weight if weight is None else float(weight)
        nw = self.next_weight if next_weight is None else float(next_weight)
        spread = score_spread(np.asarray(vectors, dtype=np.float32), self.item_cov)
        x = self.history_matrix(histories)
        none: Boost = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        # a part whose weight is 0 is not computed (serving may run the transitions alone)
        out = self._scaled(x @ self.rows, x, spread, w) if w > 0 else [none] * len(histories)
        if self.next_rows is not None and nw > 0:
            recent = recent_matrix(histories, self.n_items, self.next_recent)
            nxt = self._scaled(recent @ self.next_rows, x, spread, nw)
            out = [merge_boosts(a, b) or a for a, b in zip(out, nxt, strict=True)]
        return out

    def _scaled(self, e: sp.csr_matrix, x: sp.csr_matrix, spread: np.ndarray, w: float) -> list[Boost]:
        """Per row of ``e`` (raw term scores): ``w · σ(h) / σ(e) · e`` on its ``top_n`` largest entries
        outside the history ``x``."""
        e = e.tocsr()
        e.sort_indices()
        n = float(self.n_items)
        out: list[Boost] = []
        for r in range(e.shape[0]):
            lo, hi = e.indptr[r], e.indptr[r + 1]
            items, vals = e.indices[lo:hi].astype(np.int64), e.data[lo:hi].astype(np.float64)
            fresh = ~np.isin(items, x.indices[x.indptr[r] : x.indptr[r + 1]])
            mean = vals.sum() / n
            sd = np.sqrt(max((vals @ vals) / n - mean * mean, 0.0))  # over all items, zeros included
            items, vals = items[fresh & (vals > 0)], vals[fresh & (vals > 0)]
            if w == 0.0 or sd == 0.0 or not items.size:
                out.append((np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)))
                continue
            if items.size > self.top_n:
                top = np.argpartition(-vals, self.top_n - 1)[: self.top_n]
                items, vals = items[top], vals[top]
            out.append((items, (w * spread[r] / sd * vals).astype(np.float32)))
        return out

    def save(self, folder: str | Path) -> None:
        out = Path(folder) / ITEM_ITEM_DIR
        out.mkdir(parents=True, exist_ok=True)
        _save_csr(out, "", self.rows)
        np.save(out / "item_cov.npy", self.item_cov, allow_pickle=False)
        meta = {"n_items": self.n_items, "weight": self.weight, "top_n": self.top_n, "params": self.params}
        if self.next_rows is not None:
            _save_csr(out, "next.", self.next_rows)
            meta |= {"next_weight": self.next_weight, "next_recent": self.next_recent}
        (out / "params.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> ItemItem | None:
        """The term saved in ``folder`` (a run or a version), or None where it has none."""
        src = Path(folder) / ITEM_ITEM_DIR
        if not (src / "params.json").exists():
            return None
        meta = json.loads((src / "params.json").read_text())
        n = int(meta["n_items"])
        rows = _load_csr(src, "", n)
        cov = np.load(src / "item_cov.npy", allow_pickle=False)
        # terms saved before the transitions, or without them, have none
        nxt = _load_csr(src, "next.", n) if "next_weight" in meta else None
        return cls(
            rows,
            float(meta["weight"]),
            int(meta["top_n"]),
            cov,
            meta.get("params", {}),
            next_rows=nxt,
            next_weight=float(meta.get("next_weight", 0.0)),
            next_recent=int(meta.get("next_recent", 3)),
        )


def _save_csr(folder: Path, prefix: str, m: sp.csr_matrix) -> None:
    """``m`` as ``{prefix}indptr.npy``, ``{prefix}indices.npy``, ``{prefix}data.npy`` (no pickle)."""
    m = m.tocsr()
    for name in _ARRAYS:
        np.save(folder / f"{prefix}{name}.npy", getattr(m, name), allow_pickle=False)


def _load_csr(folder: Path, prefix: str, n: int) -> sp.csr_matrix:
    """The [n, n] matrix :func:`_save_csr` wrote with ``prefix``."""
    indptr, indices, data = (np.load(folder / f"{prefix}{name}.npy", allow_pickle=False) for name in _ARRAYS)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))

"""Fit a version's text model at export (what it is: inference/item_text.py).

Every choice is made on validation: 10 % of the items with text are held out of the fit (no projection row,
never a neighbour), get vectors from their text alone, and are ranked among themselves for the train users who
chose them, with each user standing for the mean vector of their other train items (and those items being
the history of the affinity term). The setting with the best recall@20 there wins (ties: the earlier, simpler
one in the grid, ``beta = 0`` first); the final model is refitted on all items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import product

import numpy as np
import scipy.sparse as sp

from graphprompt.tokenizer import RecTokenizer
from inference.item_text import TextVectoriser, bag_of_pieces, tokenize

RIDGE = (0.01, 0.1, 1.0, 10.0)  # times the mean feature variance
ALPHA = (1.0, 0.75, 0.5, 0.25, 0.0)  # weight of the projection against the neighbours
NEIGHBOURS = (5, 20, 50)
TAU = (0.02, 0.05, 0.1)
BETA = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # weight of the history affinity (0: the vector alone)
VALID_FRAC = 0.1
MAX_VALID_USERS = 3000
MIN_ITEMS_WITH_TEXT = 50  # fewer: no text model (nothing to learn the map from)
CUTOFF = 20


@dataclass
class _Fit:
    tok: RecTokenizer
    word_emb: np.ndarray  # [n_words, d] the model's word table
    idf: np.ndarray
    bag: sp.csr_matrix  # [items, words] L2-normalised tf-idf
    vectors: np.ndarray  # [items, D] the served item vectors

    def ridge(self, rows: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
        """(proj = word_emb @ A, bias) of the ridge map fitted on ``rows`` (centred, so bias is exact)."""
        bag = self.bag[rows]
        weights = np.asarray(bag.sum(axis=1), dtype=np.float64)
        feats = np.asarray(bag @ self.word_emb, dtype=np.float64) / weights
        y = self.vectors[rows].astype(np.float64)
        f_mean, y_mean = feats.mean(0), y.mean(0)
        fc, yc = feats - f_mean, y - y_mean
        gram = fc.T @ fc
        reg = lam * np.trace(gram) / gram.shape[0]
        a = np.linalg.solve(gram + reg * np.eye(gram.shape[0]), fc.T @ yc)
        return (self.word_emb @ a).astype(np.float32), (y_mean - f_mean @ a).astype(np.float32)

    def vectoriser(
        self, rows: np.ndarray, lam: float, alpha: float, k: int, tau: float, beta: float = 0.0
    ) -> TextVectoriser:
        """A text model that knows only ``rows`` (their bags; every other row is never a neighbour)."""
        proj, bias = self.ridge(rows, lam)
        keep = np.zeros(self.bag.shape[0], dtype=np.float32)
        keep[rows] = 1
        known = sp.diags(keep) @ self.bag
        return TextVectoriser(
            self.tok, proj, bias, self.idf, known.tocsr(), self.vectors, alpha=alpha, k=k, tau=tau, beta=beta
        )


def fit_text_model(
    tok: RecTokenizer,
    word_emb: np.ndarray,
    texts: list[str],
    item_vectors: np.ndarray,
    train: sp.csr_matrix,
    seed: int = 0,
) -> tuple[TextVectoriser | None, dict]:
    """(text model or None, report of the choice) for items ``texts`` (one per item, "" for none)."""
    t0 = time.perf_counter()
    tokens = tokenize(tok, texts)
    has_text = np.array([len(t) > 0 for t in tokens])
    n_text = int(has_text.sum())
    if n_text < MIN_ITEMS_WITH_TEXT:
        return None, {"skipped": f"{n_text} items have text (need {MIN_ITEMS_WITH_TEXT})"}
    df = np.bincount(np.concatenate([np.unique(t) for t in tokens if len(t)]), minlength=tok.n_words)
    idf = (np.log((1 + n_text) / (1 + df)) + 1).astype(np.float32)
    fit = _Fit(tok, np.asarray(word_emb, dtype=np.float32), idf, bag_of_pieces(tokens, idf), item_vectors)

    rng = np.random.default_rng(seed)
    with_text = np.flatnonzero(has_text)
    valid = np.sort(rng.choice(with_text, size=max(1, int(VALID_FRAC * n_text)), replace=False))
    rows = np.setdiff1d(with_text, valid)
    users, histories, targets = _valid_users(train, valid, item_vectors, rng)
    truth = _truth(targets, len(valid))

    scores = {}
    projections = {lam: fit.vectoriser(rows, lam, 1.0, 1, 1.0) for lam in RIDGE}
    base = projections[RIDGE[0]]
    bag_valid = fit.bag[valid]
    sims = np.asarray((bag_valid @ base.known_bag_t).todense(), dtype=np.float32)
    proj_of = {lam: v.projection(bag_valid) for lam, v in projections.items()}
    base.beta = 1.0
    affinity = base.affinity(users, histories, bag_valid)  # [users, valid items] at beta 1
    if affinity is None:  # no validation user: nothing to weigh it on
        affinity = np.zeros((len(users), len(valid)), np.float32)
    for k, tau in product(NEIGHBOURS, TAU):
        base.k, base.tau = k, tau
        nbr, nearest, _ = base.neighbours(sims)
        for lam, alpha in product(RIDGE, ALPHA):
            a = np.where(nearest >= 0, alpha, 1.0)[:, None]
            dot = users @ (a * proj_of[lam] + (1 - a) * nbr).T
            for beta in BETA:
                scores[(lam, alpha, k, tau, beta)] = _recall(dot + beta * affinity, truth)
    best = max(scores, key=lambda key: (scores[key], -list(scores).index(key)))
    lam, alpha, k, tau, beta = best
    final = fit.vectoriser(with_text, lam, alpha, k, tau, beta)
    report = {
        "items_with_text": n_text,
        "valid_items": int(len(valid)),
        "valid_users": int(len(users)),
        "chosen": {"ridge": lam, "alpha": alpha, "neighbours": k, "tau": tau, "beta": beta},
        f"valid_recall@{CUTOFF}": round(scores[best], 5),
        f"valid_recall@{CUTOFF}_vector_only": round(max(v for key, v in scores.items() if key[4] == 0.0), 5),
        f"valid_recall@{CUTOFF}_projection_only": round(
            max(v for key, v in scores.items() if key[1] == 1.0 and key[4] == 0.0), 5
        ),
        f"valid_recall@{CUTOFF}_neighbours_only": round(
            max(v for key, v in scores.items() if key[1] == 0.0 and key[4] == 0.0), 5
        ),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return final, report


def _valid_users(
    train: sp.csr_matrix, valid: np.ndarray, vectors: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(user stand-in vectors [U', D], their other train items, their held-out items as positions in
    ``valid``)."""
    train = train.tocsr()
    is_valid = np.zeros(train.shape[1], dtype=bool)
    is_valid[valid] = True
    pos = np.full(train.shape[1], -1)
    pos[valid] = np.arange(len(valid))
    cand = [
        u
        for u in range(train.shape[0])
        if is_valid[train.indices[train.indptr[u] : train.indptr[u + 1]]].any()
    ]
    if len(cand) > MAX_VALID_USERS:
        cand = sorted(rng.choice(cand, size=MAX_VALID_USERS, replace=False).tolist())
    users, histories, targets = [], [], []
    for u in cand:
        items = train.indices[train.indptr[u] : train.indptr[u + 1]]
        rest = items[~is_valid[items]]
        if rest.size == 0:
            continue
        users.append(vectors[rest].mean(0))
        histories.append(rest)
        targets.append(pos[items[is_valid[items]]])
    return np.asarray(users, dtype=np.float32).reshape(-1, vectors.shape[1]), histories, targets


def _recall(s: np.ndarray, truth: np.ndarray) -> float:
    """Mean over users of top-CUTOFF hits / min(CUTOFF, |targets|), ranking the held-out items by ``s``
    [users, valid items]; ``truth`` is the bool matrix of each user's held-out items (same shape)."""
    if not len(s):
        return 0.0
    c = min(CUTOFF, s.shape[1])
    top = np.argpartition(-s, c - 1, axis=1)[:, :c]
    hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
    return float(np.mean(hits / np.minimum(CUTOFF, truth.sum(axis=1))))


def _truth(targets: list[np.ndarray], n_items: int) -> np.ndarray:
    out = np.zeros((len(targets), n_items), dtype=bool)
    for r, t in enumerate(targets):
        out[r, t] = True
    return out

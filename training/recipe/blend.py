"""After fine-tuning: fit the ranker's parts that sit on top of the transformer, on validation only.

Two parts add non-negative boosts to the inner-product scores (``inference.ranker.Boost``):

* the candidate prior, weight ``β`` (``GraphGPT.set_prior``; linear in ``β``);
* the item-item term (``inference.item_item.ItemItem``): EASE fitted on the train matrix with its ``λ``
  chosen on validation the way the EASE baseline chooses it, each row cut to its strongest weights, and a
  blend weight ``w``.

``β`` and ``w`` are chosen together over ``prior_grid × item_item_grid`` by the checkpoint criterion
(R@20 + R@40 + N@100 on the validation users fine-tuning selected on): both read co-occurrence, so the best
``β`` with the term is not the best without it. One encoder pass scores the users (at ``β`` = 1); every grid
point is then ``h·E + β·prior + w·term`` on those stored parts. The grid holds 0 on both axes, so a part that
does not pay on validation is switched off; the test split is never looked at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from graphprompt.prompts import PromptBuilder
from inference.item_item import ItemItem, item_covariance, strongest_rows
from inference.ranker import Boost, candidate_boosts
from training.evaluation.baselines.base import selection_score
from training.evaluation.baselines.ease import EASE
from training.evaluation.harness import evaluate
from training.recipe.finetune import to_tensors


def fit_item_item(
    data, item_table: np.ndarray, lams: list[float], keep: int, top_n: int, users: np.ndarray | None = None
) -> ItemItem:
    """The item-item term of ``data``'s train matrix (weight 0 until :func:`fit_blend` sets it): EASE's ``λ``
    from ``lams`` by EASE's own validation score, each row's ``keep`` strongest weights kept."""
    t0 = time.perf_counter()
    scores: dict[float, float] = {}
    best: tuple[float, sp.csr_matrix] | None = None
    for lam in lams:
        ease = EASE(lam=lam).fit(data.train)
        scores[lam] = selection_score(evaluate(ease.score, data, "valid", users=users))
        if best is None or scores[lam] > scores[best[0]]:
            best = (lam, strongest_rows(ease.weights, keep))
        del ease  # one dense I x I matrix at a time
    assert best is not None
    params = {
        "lam": best[0],
        "keep": int(keep),
        "ease_valid": {str(k): round(v, 6) for k, v in scores.items()},
    }
    seconds = round(time.perf_counter() - t0, 1)
    term = ItemItem(best[1], 0.0, int(top_n), item_covariance(item_table), params)
    term.fit_seconds = seconds  # wall time, kept out of params (a resumed run must record the same params)
    return term


@dataclass
class _Parts:
    """Per validation user: the user vector, the prior's boosts at β = 1 and the term's at w = 1."""

    row_of: dict[int, int]
    vectors: np.ndarray
    prior: list[Boost | None]
    term: list[Boost | None]


def _score_parts(model, fdata, users: np.ndarray, item_item: ItemItem | None, device, batch: int) -> _Parts:
    model.eval()
    if model.cfg.candidate_prior:
        model.set_prior(1.0)
    prompts = fdata.eval_prompts(users)
    vectors = np.zeros((len(users), model.cfg.n_embd), dtype=np.float32)
    prior: list[Boost | None] = [None] * len(users)
    offset = model.cfg.n_words + model.cfg.n_users
    with torch.no_grad():
        for s in range(0, len(users), batch):
            rows = np.arange(s, min(s + batch, len(users)))
            ids, mask, bias = to_tensors(PromptBuilder.collate([prompts[i] for i in rows]), device)
            vec, cand = model.encode(ids, mask, bias)
            vectors[rows] = vec.float().cpu().numpy()
            if cand is not None:
                found = candidate_boosts(ids.cpu().numpy(), cand.float().cpu().numpy(), offset)
                for r, b in zip(rows, found or (), strict=True):
                    prior[r] = b
    term: list[Boost | None] = [None] * len(users)
    if item_item is not None:
        hist = [fdata.g.user_items(int(u)) for u in users]
        term = list(item_item.boosts(vectors, hist, weight=1.0))
    return _Parts({int(u): r for r, u in enumerate(users)}, vectors, prior, term)


def add_boosts(scores: np.ndarray, rows: list[Boost | None], weight: float) -> None:
    """scores[r, items] += weight · boosts, in place (a no-op at weight 0)."""
    if weight == 0.0:
        return
    for r, b in enumerate(rows):
        if b is not None and len(b[0]):
            np.add.at(scores[r], b[0], weight * b[1])


def fit_blend(
    model,
    fdata,
    data,
    item_item: ItemItem | None,
    prior_grid: list[float],
    item_item_grid: list[float],
    device: torch.device,
    batch: int,
    users: np.ndarray | None = None,
) -> dict:
    """Choose (β, w) on validation, set them on ``model`` and ``item_item``; returns the record for
    ``metrics.json`` (the choice and every grid point's validation metrics)."""
    if users is None:
        users = np.flatnonzero(np.diff(data.valid.tocsr().indptr) > 0)
    betas = prior_grid if model.cfg.candidate_prior else [0.0]
    weights = item_item_grid if item_item is not None else [0.0]
    parts = _score_parts(model, fdata, users, item_item, device, batch)
    table = model.item_emb.weight.detach().float().cpu().numpy()

    def scorer(beta: float, w: float) -> Callable[[np.ndarray], np.ndarray]:
        def score(us: np.ndarray) -> np.ndarray:
            rows = [parts.row_of[int(u)] for u in us]
            out = parts.vectors[rows] @ table.T
            add_boosts(out, [parts.prior[r] for r in rows], beta)
            add_boosts(out, [parts.term[r] for r in rows], w)
            return out

        return score

    grid = {}
    for beta in betas:
        for w in weights:
            grid[beta, w] = evaluate(scorer(beta, w), data, "valid", users=users)
    beta, w = max(grid, key=lambda k: selection_score(grid[k]))
    if model.cfg.candidate_prior:
        model.set_prior(beta)
    if item_item is not None:
        item_item.weight = float(w)
    return {
        "beta": beta,
        "weight": w,
        "grid": [{"beta": b, "weight": x, **m} for (b, x), m in grid.items()],
    }

"""After fine-tuning: fit the ranker's parts that sit on top of the transformer, on validation only.

Two parts add non-negative boosts to the inner-product scores (``inference.ranker.Boost``):

* the candidate prior, weight ``β`` (``GraphGPT.set_prior``; linear in ``β``);
* the item-item term (``inference.item_item.ItemItem``): EASE fitted on the train matrix with its ``λ``
  chosen on validation the way the EASE baseline chooses it, each row cut to its strongest weights, and a
  blend weight ``w``.

The row cut, ``β`` and ``w`` are chosen together over ``item_item_keeps × prior_grid × item_item_grid`` by
the checkpoint criterion (R@20 + R@40 + N@100 on the validation users fine-tuning selected on): both parts
read co-occurrence, so the best ``β`` with the term is not the best without it, and the best cut differs by
dataset (the committed runs chose 20 on office, 100 or 300 on beauty). One encoder pass scores the
users (at ``β`` = 1); every grid point is then ``h·E + β·prior + w·term`` on those stored parts, all
scored in one pass over the users (``training.evaluation.boost_grid``); the test step scores its ablations
the same way (:func:`score_blend_points`). The grid
holds 0 on both weight axes, so a part that does not pay on validation is switched off; the test split is
never looked at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from graphprompt.prompts import PromptBuilder
from inference.item_item import ItemItem, item_covariance, strongest_rows
from inference.ranker import Boost, candidate_boosts
from training.evaluation.baselines.base import selection_score
from training.evaluation.baselines.ease import EASE
from training.evaluation.boost_grid import evaluate_boost_grid
from training.evaluation.harness import evaluate, scored_users
from training.recipe.finetune import to_tensors


def fit_item_item(
    data,
    item_table: np.ndarray,
    lams: list[float],
    keep: int,
    top_n: int,
    users: np.ndarray | None = None,
) -> ItemItem:
    """The item-item term of ``data``'s train matrix (weight 0 until :func:`fit_blend` sets it): EASE's ``λ``
    from ``lams`` by EASE's own validation score (one value: no scoring), each row's ``keep`` strongest
    weights kept (:meth:`ItemItem.cut` gives the smaller cuts the blend grid tries)."""
    t0 = time.perf_counter()
    scores: dict[float, float] = {}
    best: tuple[float, sp.csr_matrix] | None = None
    for lam in lams:
        ease = EASE(lam=lam).fit(data.train)
        if len(lams) > 1:
            scores[lam] = selection_score(evaluate(ease.score, data, "valid", users=users))
        if best is None or scores.get(lam, 0.0) > scores.get(best[0], 0.0):
            best = (lam, strongest_rows(ease.weights, keep))
        del ease  # one dense I x I matrix at a time
    assert best is not None
    params = {
        "lam": best[0],
        "keep": int(keep),
        "ease_valid": {str(k): round(v, 6) for k, v in scores.items()},
    }
    term = ItemItem(best[1], 0.0, int(top_n), item_covariance(item_table), params)
    # wall time, kept out of params (a resumed run must record the same params)
    term.fit_seconds = round(time.perf_counter() - t0, 1)
    return term


def refit_item_item(folder: str | Path, interactions: sp.csr_matrix) -> dict | None:
    """Refit the item-item term saved in ``folder`` (a run or an export) on ``interactions``, keeping its
    λ, row cut, weight and ``top_n`` (what validation chose), and save it in place; returns a record for the
    version's manifest, or None where ``folder`` has no term.

    A retrain calls it after its gate: the gate scores the candidate on the holdout, which it must not have
    learned from, but the version it publishes serves tomorrow, and EASE's weights are cheap to refit with
    the newest interactions in (the transformer learns them at the next retrain, when they join train)."""
    term = ItemItem.load(folder)
    if term is None:
        return None
    t0 = time.perf_counter()
    ease = EASE(lam=float(term.params["lam"])).fit(interactions)  # presence only, as in fit_item_item
    rows = strongest_rows(ease.weights, int(term.params["keep"]))
    params = {**term.params, "refit_interactions": int(interactions.nnz)}
    # the transitions (if any) stay as the retrain's test step fitted them on the snapshot's train
    replace(term, rows=rows, params=params).save(folder)
    return {"interactions": int(interactions.nnz), "seconds": round(time.perf_counter() - t0, 1)}


@dataclass
class _Parts:
    """Per validation user: the user vector and the prior's boosts at β = 1."""

    row_of: dict[int, int]
    vectors: np.ndarray
    prior: list[Boost | None]
    table: np.ndarray  # the item table: base scores = vectors @ table.T

    def base(self, us: np.ndarray) -> np.ndarray:
        """The transformer's scores of users ``us`` (``evaluate_boost_grid``'s base)."""
        return self.vectors[[self.row_of[int(u)] for u in us]] @ self.table.T

    def boosts(self, us: np.ndarray, named: dict[str, list[Boost]]) -> dict[str, list[Boost | None]]:
        """The prior's and each named part's boosts of users ``us`` (its boost function)."""
        rows = [self.row_of[int(u)] for u in us]
        return {"prior": [self.prior[r] for r in rows]} | {
            name: [found[r] for r in rows] for name, found in named.items()
        }


def _score_parts(model, fdata, users: np.ndarray, device, batch: int) -> _Parts:
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
    table = model.item_emb.weight.detach().float().cpu().numpy()
    return _Parts({int(u): r for r, u in enumerate(users)}, vectors, prior, table)


def best_point(grid: list[dict], **fixed: float) -> dict | None:
    """The grid point of ``fit_blend``'s record with the best validation selection score among those
    whose fields equal ``fixed`` (``weight=0.0``: the best blend without the term), or None if none does."""
    points = [p for p in grid if all(p[k] == v for k, v in fixed.items())]
    return max(points, key=selection_score) if points else None


def score_blend_points(
    model,
    fdata,
    data,
    terms: dict[int, ItemItem],
    points: list[tuple[float, int | None, float]],
    split: str,
    device: torch.device,
    batch: int,
    users: np.ndarray | None = None,
) -> list[dict]:
    """``split``'s metrics at each point ``(β, keep, w)``: the transformer's scores plus β · the prior plus
    w · ``terms[keep]`` (keep None: no term), from one encoder pass over the split's users (the prompts are
    the same for every split). Leaves the model's prior weight at 1; callers set the one they serve."""
    users = scored_users(getattr(data, split).tocsr(), users)
    parts = _score_parts(model, fdata, users, device, batch)
    used = sorted({k for _, k, w in points if k is not None and w > 0})
    hist = [fdata.g.user_items(int(u)) for u in users] if used else []
    # the EASE rows alone: the transitions are chosen after this grid (fit_transitions), at its choice
    term_parts = {
        f"term@{k}": terms[k].boosts(parts.vectors, hist, weight=1.0, next_weight=0.0) for k in used
    }
    # the prior is added before the term, as the served ranker adds them
    weights = [{"prior": b} | ({f"term@{k}": w} if k is not None and w > 0 else {}) for b, k, w in points]
    return evaluate_boost_grid(
        parts.base, lambda us: parts.boosts(us, term_parts), weights, data, split, users
    )


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
    keeps: list[int] | None = None,
) -> tuple[dict, ItemItem | None]:
    """Choose (row cut, β, w) on validation; sets β on ``model``; returns the record for ``metrics.json``
    (the choice and every grid point's validation metrics) and the chosen term (``item_item`` cut to the
    chosen ``keep`` from ``keeps``, with its weight set)."""
    betas = prior_grid if model.cfg.candidate_prior else [0.0]
    terms = {}
    if item_item is not None:
        for keep in sorted(set(keeps or [int(item_item.params["keep"])])):
            terms[keep] = item_item if keep == item_item.params["keep"] else item_item.cut(keep)
    # w = 0 is the same point for every cut: scored once per β (and always where there is no term)
    points = [(b, None, 0.0) for b in betas] if not terms or 0.0 in item_item_grid else []
    points += [(b, k, w) for b in betas for k in terms for w in item_item_grid if w > 0]
    found = score_blend_points(model, fdata, data, terms, points, "valid", device, batch, users)
    grid = dict(zip(points, found, strict=True))
    beta, keep, w = max(grid, key=lambda p: selection_score(grid[p]))
    if model.cfg.candidate_prior:
        model.set_prior(beta)
    chosen = None
    if terms:
        chosen = terms[keep if keep is not None else max(terms)]
        chosen.weight = float(w)
    record = {
        "beta": beta,
        "weight": w,
        "keep": keep,
        "grid": [{"beta": b, "keep": k, "weight": x, **m} for (b, k, x), m in grid.items()],
    }
    return record, chosen


def fit_transitions(
    model,
    fdata,
    data,
    term: ItemItem,
    beta: float,
    grid: list[float],
    device: torch.device,
    batch: int,
    users: np.ndarray | None = None,
) -> dict:
    """Choose the transitions' weight (``term.next_rows`` must be set) on validation, with the prior's
    weight and the EASE rows' cut and weight as :func:`fit_blend` chose them; sets ``term.next_weight``
    and leaves the model's prior at ``beta``. Returns the record for ``metrics.json``."""
    users = scored_users(data.valid.tocsr(), users)
    parts = _score_parts(model, fdata, users, device, batch)
    hist = [fdata.g.user_items_in_time(int(u)) for u in users]  # newest last, whatever the prompt order
    ease = term.boosts(parts.vectors, hist, weight=1.0, next_weight=0.0)
    nxt = term.boosts(parts.vectors, hist, weight=0.0, next_weight=1.0)
    named = {"term": ease, "next": nxt}
    weights = [{"prior": beta, "term": term.weight, "next": float(w)} for w in grid]
    found = evaluate_boost_grid(parts.base, lambda us: parts.boosts(us, named), weights, data, "valid", users)
    best = max(range(len(grid)), key=lambda i: selection_score(found[i]))
    term.next_weight = float(grid[best])
    if model.cfg.candidate_prior:
        model.set_prior(beta)
    return {
        "next_weight": term.next_weight,
        "next_recent": term.next_recent,
        "grid": [{"next_weight": float(w), **m} for w, m in zip(grid, found, strict=True)],
    }

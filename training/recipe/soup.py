"""Checkpoint soup: a few of fine-tuning's best epochs averaged into one set of weights, kept only where
validation prefers it to the best epoch alone.

Why: fine-tuning runs Adam at a constant learning rate and early-stops on validation, so the epochs around the
best one are iterates scattered around the same optimum; their average often generalises better than any one
of them (stochastic weight averaging, Izmailov et al. 2018; greedy "model soups", Wortsman et al. 2022). The
result is one set of weights of the same shape: the exported encoder costs what it did.

How (``TrainConfig.soup_size`` = K > 1): while fine-tuning, the weights of the K best epochs by the validation
selection score are kept in ``finetune/soup/``. After it stops, greedily: the soup starts as the best epoch;
each other kept epoch, in descending score order, joins when the uniform average with it scores higher on the
same validation users than the soup so far. A soup of two or more epochs is written to
``finetune/soup.safetensors`` and the test step loads it; ``finetune/soup.json`` records every try. The test
split is never looked at. Buffers (the prior's weight and item covariance) are the best epoch's, the
covariance refreshed for the averaged item table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

SOUP_DIR = "soup"
SOUP_WEIGHTS = "soup.safetensors"
SOUP_RECORD = "soup.json"


def _epoch_file(stage_dir: Path, epoch: int) -> Path:
    return stage_dir / SOUP_DIR / f"epoch-{epoch}.safetensors"


def keep_epoch(stage_dir: Path, model, state: dict, epoch: int, score: float, size: int) -> None:
    """Save this epoch's weights when it is among the ``size`` best so far (``state["soup"]``: [score,
    epoch] pairs, best first, saved with the fine-tune's checkpoint). Files of evicted epochs stay until
    :func:`prune` runs after that checkpoint, so a crash in between loses nothing the checkpoint names."""
    kept = [tuple(x) for x in state.get("soup", [])]
    kept = sorted([*kept, (float(score), int(epoch))], key=lambda x: (-x[0], x[1]))[:size]
    if (float(score), int(epoch)) in kept:
        model.save(stage_dir / SOUP_DIR, _epoch_file(stage_dir, epoch).name)
    state["soup"] = [list(x) for x in kept]


def prune(stage_dir: Path, state: dict) -> None:
    """Remove the kept-epoch files the state no longer names."""
    names = {_epoch_file(stage_dir, int(e)).name for _, e in state.get("soup", [])}
    for f in (stage_dir / SOUP_DIR).glob("epoch-*.safetensors"):
        if f.name not in names:
            f.unlink()


def make_soup(stage_dir: Path, model, state: dict, valid_score: Callable[[], float]) -> dict:
    """Greedy soup over the kept epochs (see the module docstring); leaves ``model`` holding the best
    epoch's weights and returns the record also written to ``soup.json``."""
    from safetensors.torch import load_file

    kept = [(float(s), int(e)) for s, e in state.get("soup", [])]
    (stage_dir / SOUP_WEIGHTS).unlink(missing_ok=True)
    out: dict = {"kept": [{"epoch": e, "valid": s} for s, e in kept], "members": [], "tries": []}
    if len(kept) < 2:
        out["members"] = [kept[0][1]] if kept else []
        (stage_dir / SOUP_RECORD).write_text(json.dumps(out, indent=2))
        return out
    names = [n for n, _ in model.named_parameters()]
    weights = [load_file(str(_epoch_file(stage_dir, e))) for _, e in kept]
    best_state = weights[0]
    members, total = [0], {n: best_state[n].double().clone() for n in names}
    best_score = kept[0][0]
    for k in range(1, len(kept)):
        trial = {n: (total[n] + weights[k][n].double()) / (len(members) + 1) for n in names}
        _load(model, best_state, trial)
        score = float(valid_score())
        joined = score > best_score
        out["tries"].append({"epoch": kept[k][1], "valid": score, "joined": joined})
        if joined:
            members.append(k)
            best_score = score
            for n in names:
                total[n] += weights[k][n].double()
    out["members"] = [kept[k][1] for k in members]
    out["valid"] = best_score
    if len(members) > 1:
        _load(model, best_state, {n: t / len(members) for n, t in total.items()})
        model.save(stage_dir, SOUP_WEIGHTS)
    _load(model, best_state, {})
    (stage_dir / SOUP_RECORD).write_text(json.dumps(out, indent=2))
    return out


def record(stage_dir: Path) -> dict | None:
    """The last soup's record (``soup.json``), or None."""
    path = stage_dir / SOUP_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def soup_weights(stage_dir: Path) -> Path | None:
    """The soup's weights when the last soup made one, else None (the best epoch's are used)."""
    path = stage_dir / SOUP_WEIGHTS
    return path if path.is_file() else None


def _load(model, base: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> None:
    """``base`` with ``params`` over it into ``model``; the prior's frozen item covariance follows the
    (possibly averaged) item table."""
    device = next(model.parameters()).device
    merged = {n: params[n].to(base[n].dtype) if n in params else base[n] for n in base}
    model.load_state_dict({n: t.to(device) for n, t in merged.items()})
    if getattr(model.cfg, "candidate_prior", False):
        model.set_prior(float(model.prior_beta))

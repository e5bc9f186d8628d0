"""Offline probe (issue 14): would EASE's item-item weights, added to a trained run's scores, pay?

    python benchmarks/ease_blend_probe.py RUN_DIR DATASET [--top-m 0 30 100]

Scores the run's selected weights (its prior weight included) on validation and test, fits EASE on the same
train matrix with λ chosen on validation (the baseline's grid), and adds ``w × EASE scores`` to the model's,
either raw or rescaled per user to the model scores' spread ("norm": ``std(model) / std(EASE)`` over all
items). The rows of EASE's weight matrix are optionally cut to their ``m`` largest weights (what a served
ranker could hold: 0 keeps them all). The weight and the scaling are chosen on validation; the test row is
printed once for the chosen pair. Nothing here enters the served model: it says whether building it would be
worth it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("dataset", help="prepared folder or raw RecBole folder (as `edgerec train` takes)")
    ap.add_argument("--top-m", type=int, nargs="+", default=[0, 30])
    args = ap.parse_args()

    import torch

    from training.data.sources import load_dataset
    from training.evaluation.baselines.base import selection_score
    from training.evaluation.baselines.ease import EASE
    from training.evaluation.harness import evaluate
    from training.recipe.finetune import PredictiveData, score_users
    from training.recipe.train import load_run

    ds = load_dataset(args.dataset)
    cfg = json.loads((args.run_dir / "train_config.json").read_text())
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    model, builder = load_run(args.run_dir)
    model.set_prior((metrics.get("prior") or {}).get("beta", 0.0))
    data = PredictiveData(
        builder, builder.graph, int(cfg.get("seed", 0)), float(cfg.get("target_frac", 0.5)), 1
    )
    memo: dict[bytes, np.ndarray] = {}

    def model_scores(users: np.ndarray) -> np.ndarray:
        key = users.tobytes()
        if key not in memo:
            with torch.no_grad():
                memo[key] = score_users(model, data, users, torch.device("cpu"), 256)
        return memo[key].copy()  # the harness masks its input in place

    fits = [EASE(lam=lam).fit(ds.train) for lam in EASE.grid["lam"]]
    ease = max(fits, key=lambda e: selection_score(evaluate(e.score, ds, "valid")))
    print(f"EASE λ {ease.params['lam']}: test {evaluate(ease.score, ds, 'test')}", flush=True)
    print(
        f"model alone: valid {evaluate(model_scores, ds, 'valid')} test {evaluate(model_scores, ds, 'test')}"
    )
    x = ds.train.tocsr().astype(np.float32)
    for m in args.top_m:
        w_mat = ease.weights
        if m > 0:  # keep each row's m largest weights
            top = np.argpartition(-w_mat, m, axis=1)[:, :m]
            rows = np.arange(w_mat.shape[0])[:, None]
            w_mat = np.zeros_like(ease.weights)
            w_mat[rows, top] = ease.weights[rows, top]

        def blend(users: np.ndarray, w: float, scale: str, w_mat=w_mat) -> np.ndarray:
            s = model_scores(users)
            e = np.asarray(x[users] @ w_mat, dtype=np.float32)
            if scale == "norm":
                e *= s.std(axis=1, keepdims=True) / (e.std(axis=1, keepdims=True) + 1e-9)
            return s + w * e

        grid = {}
        for scale in ("raw", "norm"):
            for w in WEIGHTS:
                grid[scale, w] = evaluate(lambda us, w=w, scale=scale: blend(us, w, scale), ds, "valid")
                print(f"top-m {m} {scale} w {w}: valid sum {selection_score(grid[scale, w]):.4f}", flush=True)
        scale, w = max(grid, key=lambda k: selection_score(grid[k]))
        test = evaluate(lambda us, w=w, scale=scale: blend(us, w, scale), ds, "test")
        print(f"top-m {m}: chosen {scale} w {w}: valid {grid[scale, w]} test {test}", flush=True)


if __name__ == "__main__":
    main()

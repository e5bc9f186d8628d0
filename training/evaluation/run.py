"""A trained run as a row of `edgerec evaluate`'s table, beside the baselines on the same split.

The run's selected weights are scored afresh with the shared harness
(``training.evaluation.harness.evaluate``),
using the same evaluation prompts as training, so the row is comparable with the baselines' rows and with
``metrics.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from training.data.dataset import PreparedDataset


def evaluate_run(run_dir: Path, dataset: PreparedDataset) -> dict[str, Any]:
    import torch

    from inference.item_item import ItemItem
    from training.evaluation.harness import evaluate
    from training.recipe.finetune import PredictiveData, score_users
    from training.recipe.train import load_run

    run_dir = Path(run_dir)
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(
            f"{run_dir}: no model.safetensors (is the run finished? `edgerec train --resume`)"
        )
    recorded = (
        json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    )
    if recorded.get("fingerprint") not in (None, dataset.fingerprint):
        raise ValueError(f"{run_dir} was trained on different data than {dataset.name} (fingerprint differs)")
    cfg = json.loads((run_dir / "train_config.json").read_text())
    model, builder = load_run(run_dir)
    data = PredictiveData(
        builder, builder.graph, int(cfg.get("seed", 0)), float(cfg.get("target_frac", 0.5)), 1
    )
    batch = int(cfg.get("eval_batch", 256))
    t0 = time.perf_counter()
    cpu = torch.device("cpu")

    item_item = ItemItem.load(run_dir)

    def score(users):
        return score_users(model, data, users, cpu, batch, item_item=item_item)

    with torch.no_grad():
        valid = evaluate(score, dataset, "valid")
        test = evaluate(score, dataset, "test")
    return {
        "model": f"GraphGPT ({run_dir.name})",
        "params": {"run": str(run_dir), "best_epoch": recorded.get("best_epoch"), "seed": cfg.get("seed")},
        "valid": valid,
        "test": test,
        "fit_seconds": recorded.get("train_seconds"),
        "search_seconds": round(time.perf_counter() - t0, 1),
    }

"""Post-hoc fusion: what a trained run's ranking gains from its users' two-hop candidates (no model change).

    python benchmarks/candidate_fusion.py RUN_DIR .edgerec/data/amazon-office --candidates 50 --betas 0 1 2 3

Scores every user with the run's own model (``score_users``, the test-time prompts), standardises each user's
scores, adds ``beta * w / max(w)`` for the user's ``--candidates`` two-hop items (``w``: co-occurrence /
degree**0.5 from the full train history) and prints valid and test metrics per ``beta``: the "post-hoc
fusion" table of ``benchmarks/results/candidates-amazon-office.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("dataset", help="the prepared dataset folder the run was trained on")
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    args = ap.parse_args(argv)

    import torch

    from training.data.dataset import PreparedDataset
    from training.evaluation.harness import evaluate
    from training.recipe.finetune import PredictiveData, score_users
    from training.recipe.train import load_run

    torch.set_num_threads(1)
    model, builder = load_run(args.run_dir)
    data = PreparedDataset.load(args.dataset)
    g = builder.graph
    users = np.arange(g.n_users)
    pdata = PredictiveData(builder, g, seed=0)
    scores = np.concatenate(
        [
            score_users(model, pdata, users[s : s + 512], torch.device("cpu"))
            for s in range(0, len(users), 512)
        ]
    )
    z = (scores - scores.mean(1, keepdims=True)) / scores.std(1, keepdims=True)
    prior = np.zeros_like(z)
    for u in users:
        nb = g.neighbourhood(int(u), g.user_items(int(u)), n_items=args.candidates, item_norm=0.5)
        if len(nb.two_hop_items):
            prior[u, nb.two_hop_items] = nb.two_hop_weight / nb.two_hop_weight.max()
    for beta in args.betas:

        def fused(us: np.ndarray, beta: float = beta) -> np.ndarray:
            return z[us] + beta * prior[us]

        v, t = evaluate(fused, data, "valid"), evaluate(fused, data, "test")
        print(
            f"beta {beta:g}: valid R@20 {v['recall@20']:.4f} N@100 {v['ndcg@100']:.4f} | test R@20 "
            f"{t['recall@20']:.4f} R@40 {t['recall@40']:.4f} N@100 {t['ndcg@100']:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""What the blend grid's one-pass scoring (training/evaluation/boost_grid.py) saves over scoring each point
with ``evaluate``, on a real dataset's validation split, and a check that both give the same metrics.

The grid is the recipe's (``TrainConfig``'s prior_grid × (w = 0, or each cut × each w > 0): 7 × (1 + 3 × 5)
= 112 points, training/recipe/blend.py). Training is not what is measured here, so the user vectors and
item table are seeded random (``--dim``, the recipe's width), and each user gets boosts of the recipe's
sizes: ``--prior`` candidate items (the prompt's two-hop candidates) and ``--top-n`` items for each cut of
the item-item term, drawn from the items the user's train neighbours hold so they overlap as real ones do.
Both ways score the same ``--users`` validation users: the old way on ``--old-points`` of the points (each
point costs the same), the new way on all of them; the figures are seconds per point and the projected
time of the whole grid over every validation user.

    OMP_NUM_THREADS=1 python benchmarks/blend_grid_bench.py /work/shared/datasets/amazon-sports
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _boosts(rng, train, users, size: int) -> list:
    """Per user: ``size`` items drawn from what users sharing an item with them hold, boosts in (0, 1]."""
    item_users = train.T.tocsr()
    out = []
    for u in users:
        own = train.indices[train.indptr[u] : train.indptr[u + 1]]
        near = np.concatenate(
            [item_users.indices[item_users.indptr[i] : item_users.indptr[i + 1]] for i in own]
        )
        pool = np.unique(
            np.concatenate([train.indices[train.indptr[v] : train.indptr[v + 1]] for v in near[:50]])
        )
        pool = np.setdiff1d(pool, own)
        if not len(pool):
            out.append(None)
            continue
        items = rng.choice(pool, size=min(size, len(pool)), replace=False).astype(np.int64)
        out.append((items, rng.random(len(items)).astype(np.float32) + 1e-3))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="a dataset folder or prepared name (as edgerec train takes)")
    ap.add_argument("--users", type=int, default=4096, help="validation users scored")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--prior", type=int, default=150)
    ap.add_argument("--top-n", type=int, default=None, help="default: the recipe's item_item_top_n")
    ap.add_argument("--old-points", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    from training.data.sources import load_dataset
    from training.evaluation.boost_grid import add_boosts, evaluate_boost_grid
    from training.evaluation.harness import evaluate, scored_users
    from training.recipe.train import TrainConfig

    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    train = data.train.tocsr()
    rng = np.random.default_rng(0)
    users = scored_users(data.valid.tocsr())
    users = np.sort(rng.choice(users, size=min(args.users, len(users)), replace=False))
    n_items = train.shape[1]
    vectors = rng.standard_normal((len(users), args.dim)).astype(np.float32)
    table = rng.standard_normal((n_items, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    cfg = TrainConfig(dataset=args.dataset)
    parts = {"prior": _boosts(rng, train, users, args.prior)}
    for keep in cfg.item_item_keeps:
        parts[f"term@{keep}"] = _boosts(rng, train, users, args.top_n or cfg.item_item_top_n)
    row = {int(u): r for r, u in enumerate(users)}
    betas, ws = cfg.prior_grid, [w for w in cfg.item_item_grid if w > 0]
    points = [{"prior": b} for b in betas]
    points += [{"prior": b, f"term@{k}": w} for b in betas for k in cfg.item_item_keeps for w in ws]

    def base(us):
        return vectors[[row[int(u)] for u in us]] @ table.T

    def boosts(us):
        return {name: [found[row[int(u)]] for u in us] for name, found in parts.items()}

    def one_point(point):
        """The grid's old way: every item scored, then this point's parts added (as fit_blend did)."""

        def score(us):
            out = base(us)
            for name, weight in point.items():
                add_boosts(out, [parts[name][row[int(u)]] for u in us], weight)
            return out

        return score

    old_points = points[:: max(1, len(points) // args.old_points)][: args.old_points]
    with threadpool_limits(limits=args.threads):
        t0 = time.perf_counter()
        old = [evaluate(one_point(p), data, "valid", users=users) for p in old_points]
        old_s = (time.perf_counter() - t0) / len(old_points)
        t0 = time.perf_counter()
        new = evaluate_boost_grid(base, boosts, points, data, "valid", users=users)
        new_s = (time.perf_counter() - t0) / len(points)
    same = all(new[points.index(p)] == m for p, m in zip(old_points, old, strict=True))
    every = len(scored_users(data.valid.tocsr()))  # what the recipe's grid scores
    result = {
        "command": "python benchmarks/blend_grid_bench.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "dataset": str(args.dataset),
        "items": n_items,
        "users": len(users),
        "points": len(points),
        "old_seconds_per_point": round(old_s, 3),
        "new_seconds_per_point": round(new_s, 3),
        "speedup": round(old_s / new_s, 1),
        "identical_metrics": same,
        "projected_full_grid_s": {
            "users": every,
            "old": round(old_s * len(points) * every / len(users)),
            "new": round(new_s * len(points) * every / len(users)),
        },
        "threads": args.threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if not same:
        raise SystemExit("the one-pass grid's metrics differ from evaluate's")


if __name__ == "__main__":
    main()

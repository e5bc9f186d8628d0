"""How much the order of a user's items says on a split: a first-order Markov chain as a recommender.

It scores item b for a user by how often b came right after the user's newest items in the train users' time
lines (``inference.item_item.transition_rows``, the rows the ranker's transitions use; the newest item
weighs 1, the one before 0.5, ...), popularity breaking ties. Validation and test, the paper's protocol
(train items as history, train items masked). Where this beats EASE, the order carries what co-occurrence
misses, and the ranker's transitions (``--set transitions=true``) have something to add.

    python benchmarks/markov_probe.py /work/runs/data/amazon-office-temporal [--recent 1 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="prepared dataset folder (with its time order) or a raw source")
    ap.add_argument(
        "--recent", type=int, nargs="+", default=[1, 3], help="newest items the chain starts from"
    )
    ap.add_argument("--keep", type=int, default=100, help="largest counts kept per item (as transition_keep)")
    args = ap.parse_args(argv)

    from graphprompt.graph import BipartiteGraph
    from inference.item_item import recent_matrix, transition_rows
    from training.data.sources import load_dataset
    from training.evaluation.harness import evaluate

    ds = load_dataset(args.dataset)
    if ds.times is None:
        raise SystemExit(f"{args.dataset}: no time order (prepared before it was kept); prepare it again")
    g = BipartiteGraph.from_matrix(ds.train, ds.times)
    seqs = g.time_lines()
    t = transition_rows(seqs, ds.n_items, args.keep)
    pop = np.asarray(ds.train.sum(0)).ravel().astype(np.float32)
    tie = 1e-6 * pop / max(float(pop.max()), 1.0)
    rows = []
    for recent in args.recent:

        def score(users: np.ndarray, recent: int = recent) -> np.ndarray:
            # the ranker's transitions' raw scores (ItemItem.boosts before its scaling)
            x = recent_matrix([seqs[int(u)] for u in users], ds.n_items, recent)
            return (x @ t).toarray() + tie

        rows.append(
            {
                "recent": recent,
                "valid": evaluate(score, ds, "valid"),
                "test": evaluate(score, ds, "test"),
            }
        )
    print(
        json.dumps(
            {
                "dataset": ds.name,
                "split": ds.split.get("kind"),
                "fingerprint": ds.fingerprint[:16],
                "load_average": os.getloadavg()[0],
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

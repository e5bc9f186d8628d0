"""Does the model use the newest interaction in its prompt as well as EASE does? (issues 14 and 15)

The paper protocol scores each user's last item with the train items as history: the validation item, the
user's newest event before the test one, is hidden. A live service holds that event. On a prepared dataset
(temporal leave-last-out split) and a version trained and exported on it, this scores every test user's
test item twice, for the version (through the inference core, as ``replay_bench`` does) and for EASE fitted
on the same histories:

1. ``train``: history = the train items (the paper protocol),
2. ``train+valid``: history = the train items and the validation item (what the service would hold).

    OMP_NUM_THREADS=1 python benchmarks/recent_item_probe.py PREPARED_DATASET VERSION_FOLDER

prints recall@k and NDCG@k of both models under both histories, and the newest item's gain for each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", type=Path, help="a prepared dataset folder (edgerec data prepare)")
    p.add_argument("version", type=Path, help="a version folder trained on it (export or model store)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--ease-lambda", type=float, default=200.0)
    p.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = p.parse_args()

    from replay_bench import metrics_of, rank_ease, rank_version

    from training.data.dataset import PreparedDataset

    ds = PreparedDataset.load(args.dataset)
    if not (args.version / "item_ids.json").exists():
        raise SystemExit(f"{args.version} is not a version folder (no item_ids.json)")
    train, valid, test = ds.train.tocsr(), ds.valid.tocsr(), ds.test.tocsr()
    users = [u for u in range(ds.n_users) if test[u].nnz]
    names = [ds.user_ids[u] for u in users]
    targets = {ds.user_ids[u]: {ds.item_ids[i] for i in test[u].indices} for u in users}
    report = {"dataset": str(args.dataset), "version": str(args.version), "users": len(users), "k": args.k}
    for label, with_valid in (("train", False), ("train+valid", True)):
        hist = {}
        for u in range(ds.n_users):
            items = [ds.item_ids[i] for i in train[u].indices]
            if with_valid:
                items += [ds.item_ids[i] for i in valid[u].indices]
            hist[ds.user_ids[u]] = items
        for model, ranked in (
            ("model", rank_version(args.version, {x: hist[x] for x in names}, names, args.k)),
            ("ease", rank_ease(hist, names, args.k, args.ease_lambda)),
        ):
            m = metrics_of(ranked, targets, args.k)
            report[f"{model} {label}"] = {x: y for x, y in m.items() if x != "per_user"}
            print(f"{model:5s} history={label:11s} " + json.dumps(report[f"{model} {label}"]), flush=True)
    for model in ("model", "ease"):
        a, b = (
            report[f"{model} train"][f"recall@{args.k}"],
            report[f"{model} train+valid"][f"recall@{args.k}"],
        )
        report[f"{model} newest item gain"] = b / a - 1 if a else None
        print(f"{model}: the newest item lifts R@{args.k} by {b / a - 1:+.1%}" if a else f"{model}: R@k 0")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Protocol checks behind the Baselines section of docs/benchmarks.md.

``protocol``: the same fitted models under three test protocols, to show which one the reference numbers of
``../shared/datasets/README.md`` follow:
  A  fit on train, test with train + valid masked (``evaluate(..., mask_valid_on_test=True)``);
  B  fit on train, test with train masked only (validation items stay rankable): the harness default;
  C  refit on train + valid, test with train + valid masked.
``seeds``: the spread of test metrics over split seeds at fixed hyper-parameters (how far a reference number
from another shuffle of the same protocol can be expected to lie).
``checks``: Pop under three random tie orders (is the tie rule behind a Pop difference?) and EASE's test
R@20 averaged per user (the protocol) vs pooled over users (sum of hits / sum of min(20, |test|)).
``order``: SASRec at fixed hyper-parameters reading each user's train items in time order (what the table
reports), in reverse and in a fixed random order: how much the time order is worth on this split.

    OMP_NUM_THREADS=1 python -m benchmarks.baselines_bench protocol amazon-office
    OMP_NUM_THREADS=1 python -m benchmarks.baselines_bench seeds amazon-office --seeds 98765,1,2,3,4,5
    OMP_NUM_THREADS=1 python -m benchmarks.baselines_bench checks amazon-beauty
    OMP_NUM_THREADS=1 python -m benchmarks.baselines_bench order amazon-office
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp

from training.data.dataset import prepare
from training.data.ingest import read_source
from training.evaluation.baselines import get
from training.evaluation.harness import evaluate

DATASETS = Path(
    os.environ.get("EDGEREC_DATASETS", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets")
)
MODELS = [("pop", {}), ("itemknn", {"k": 200, "shrink": 0.0}), ("ease", {"lam": 200.0})]


def _fmt(m: dict) -> str:
    return f"{m['recall@20']:.4f} / {m['recall@40']:.4f} / {m['ndcg@100']:.4f}"


def protocol(name: str) -> None:
    ds = prepare(read_source(DATASETS / name), name)
    empty = sp.csr_matrix(ds.train.shape, dtype=np.float32)
    train_valid = (ds.train + ds.valid).tocsr()
    refit = SimpleNamespace(train=train_valid, valid=empty, test=ds.test)
    print(f"## {name}: test R@20 / R@40 / N@100 under three protocols")
    print("| model | params | A: mask train+valid | B: mask train (harness) | C: refit on train+valid |")
    print("|---|---|---|---|---|")
    for model, params in MODELS:
        m = get(model)(**params).fit(ds.train)
        a = evaluate(m.score, ds, "test", mask_valid_on_test=True)
        b = evaluate(m.score, ds, "test")
        c = evaluate(get(model)(**params).fit(train_valid).score, refit, "test")
        print(f"| {model} | {params} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} |", flush=True)


def seeds(name: str, seed_list: list[int]) -> None:
    raw = read_source(DATASETS / name)
    print(f"## {name}: test R@20 / R@40 / N@100 per split seed (fixed hyper-parameters)")
    print("| split seed | " + " | ".join(f"{m} {p}" for m, p in MODELS) + " |")
    print("|---|" + "---|" * len(MODELS))
    for seed in seed_list:
        ds = prepare(raw, name, seed=seed)
        cells = [_fmt(evaluate(get(m)(**p).fit(ds.train).score, ds, "test")) for m, p in MODELS]
        print(f"| {seed} | " + " | ".join(cells) + " |", flush=True)


def checks(name: str) -> None:
    from training.evaluation.harness import known_items
    from training.evaluation.metrics import hit_matrix, mask_items, topk_items

    ds = prepare(read_source(DATASETS / name), name)
    counts = get("pop")().fit(ds.train).counts
    print(f"## {name}: Pop test R@20 / R@40 / N@100 by tie order")
    print(f"| index order (harness) | {_fmt(evaluate(get('pop')().fit(ds.train).score, ds, 'test'))} |")
    for seed in (0, 1, 2):
        jitter = (
            np.random.default_rng(seed).random(len(counts)).astype(np.float32) * 0.5
        )  # < 1: only ties move
        scores = counts + jitter
        m = evaluate(lambda u, s=scores: np.tile(s, (len(u), 1)), ds, "test")
        print(f"| random order {seed} | {_fmt(m)} |")
    model = get("ease")(lam=200.0).fit(ds.train)
    known = known_items(ds, "test")
    hits, denom = 0.0, 0.0
    per_user = []
    for start in range(0, ds.n_users, 2048):
        users = np.arange(start, min(start + 2048, ds.n_users))
        held = ds.test[users]
        n = np.diff(held.indptr)
        scores = mask_items(model.score(users), known[users])
        h = hit_matrix(topk_items(scores, 20), held).sum(axis=1)
        ok = n > 0
        per_user.append(h[ok] / np.minimum(20, n[ok]))
        hits, denom = hits + h[ok].sum(), denom + np.minimum(20, n[ok]).sum()
    mean = np.concatenate(per_user).mean()
    print(f"EASE lam=200 test R@20: per-user mean {mean:.4f}, pooled {hits / denom:.4f}")


def order(name: str) -> None:
    import torch

    from training.evaluation.baselines.base import selection_score
    from training.evaluation.sequences import train_sequences

    torch.set_num_threads(1)
    ds = prepare(read_source(DATASETS / name), name)
    timed = train_sequences(ds)
    rng = np.random.default_rng(0)
    variants = {"time order (table)": timed, "reversed": timed.copy(), "fixed random order": timed.copy()}
    for u in range(ds.n_users):
        a, b = timed.indptr[u], timed.indptr[u + 1]
        variants["reversed"].indices[a:b] = timed.indices[a:b][::-1]
        variants["fixed random order"].indices[a:b] = rng.permutation(timed.indices[a:b])
    params = {"loss": "ce", "dropout": 0.5, "max_epochs": 30}
    print(f"## {name}: SASRec {params}, valid and test R@20 / R@40 / N@100 by the order it reads")
    print("| order | best epoch | valid | valid sum | test |")
    print("|---|---|---|---|---|")
    for label, seqs in variants.items():
        m = get("sasrec")(**params).fit(ds.train, ds.valid, sequences=seqs)
        v, t = evaluate(m.score, ds, "valid"), evaluate(m.score, ds, "test")
        print(
            f"| {label} | {m.info['best_epoch']} | {_fmt(v)} | {selection_score(v):.4f} | {_fmt(t)} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["protocol", "seeds", "checks", "order"])
    ap.add_argument("dataset")
    ap.add_argument("--seeds", default="98765,1,2,3,4,5")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        if args.what == "protocol":
            protocol(args.dataset)
        elif args.what == "checks":
            checks(args.dataset)
        elif args.what == "order":
            order(args.dataset)
        else:
            seeds(args.dataset, [int(s) for s in args.seeds.split(",")])


if __name__ == "__main__":
    main()

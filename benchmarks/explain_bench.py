"""In-process cost of ``explain: true`` per answer, on a store's promoted (or named) version.

    python benchmarks/explain_bench.py --store .edgerec/models [--version V] [--users 600]

Users are drawn by train activity (as ``load_bench.py`` draws them); each gets its top 10 from the version's
own path (prompt, encoder, prior, search), then the route's answer building is timed per answer, best of
``--repeats`` passes over all users:

- ``plain``: the answer without reasons (ids, titles, scores, orjson);
- ``explain, computed``: reasons computed (the reason cache emptied before each answer), as the service does
  it (the version's ``PairCounts``);
- ``explain, block product``: the same reasons from the block product that graphs too big for ``PairCounts``
  use;
- ``explain, cached``: a returning user's unchanged answer (reasons from the reason cache).

The load bench (``--explain``) gives what these cost a running service at 32 clients; this separates the
parts. It also prints the size of ``PairCounts``, of one answer's reasons as JSON and the memory one cached
answer holds (tracemalloc: key, fragments and their strings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("EDGEREC_HOME", ".edgerec")) / "models")
    ap.add_argument("--version", default=None, help="version id [default: the promoted one]")
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = ap.parse_args()

    from model_store.store import ModelStore
    from service.api.common import json_response
    from service.api.routes.recommend import to_response
    from service.config import Settings
    from service.recommender import Recommendation
    from service.serving import load_serving_model

    version = args.version or ModelStore(args.store).current()
    if version is None:
        sys.exit(f"{args.store}: no version is promoted; pass --version")
    model = load_serving_model(Settings(model_store=args.store, model_version=version, use_gpu="no"), version)
    graph = model.graph
    deg = graph.user_degree().astype(np.float64)
    users = np.random.default_rng(0).choice(graph.n_users, args.users, p=deg / deg.sum())
    recs = []
    for u in users.tolist():
        hist = graph.user_items(u)
        nbr = model.builder.neighbourhood(u)
        ids, scores = model.rank([model.builder.predictive(u, hist, nbr)], [hist], [hist], 10)
        recs.append(
            Recommendation(
                user_id=model.user_ids[u],
                item_idx=ids[0],
                scores=scores[0],
                version=model.version,
                history=hist,
                co_users=nbr.co_users,
            )
        )

    def answer(r: Recommendation, explain: bool) -> None:
        json_response(to_response(model, r, explain))

    def computed(r: Recommendation) -> None:
        model.reason_cache._entries.clear()
        answer(r, True)

    def timed(f) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            for r in recs:
                f(r)
            best = min(best, (time.perf_counter() - t) / len(recs))
        return round(best * 1e6, 1)

    history_mean = float(np.mean([r.history.size for r in recs]))
    out = {"version": version, "users": len(recs), "history_mean": round(history_mean, 1)}
    out["plain_us"] = timed(lambda r: answer(r, False))
    out["explain_computed_us"] = timed(computed)
    pairs, model.pairs = model.pairs, None
    out["explain_block_product_us"] = timed(computed)
    model.pairs = pairs
    model.reason_cache._entries.clear()
    tracemalloc.start()  # fill the cache (what one cached answer holds), then time hits
    before = tracemalloc.get_traced_memory()[0]
    for r in recs:
        answer(r, True)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    out["cached_answer_bytes_held"] = round(held / len(model.reason_cache))
    out["explain_cached_us"] = timed(lambda r: answer(r, True))
    out["pair_counts_mb"] = round(pairs.nbytes / 2**20, 1) if pairs is not None else None
    one = to_response(model, recs[0], True)
    out["cached_answer_json_bytes"] = len(orjson.dumps([it["reasons"] for it in one["items"]]))
    out["loadavg_1m"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

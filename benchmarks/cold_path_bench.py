"""Cold path: what a cache miss of a train user costs on the event loop, stored vs computed, and what writing
the stored neighbourhoods costs the export.

    python benchmarks/cold_path_bench.py VERSION_DIR [--users 1000] [--write]

- computed: ``builder.neighbourhood`` + the bounded BFS among the prompt's nodes + the prompt with its bias
  (what a miss ran on the event loop before the version stored them);
- stored: the memory-mapped lookup + the same prompt and bias (``Recommender._from_version``'s path);
- ``--write``: ``training.export.neighbourhoods.write_neighbourhoods`` for every user into a temporary folder
  (the export's added time), with its size.

Both paths build identical prompts (``tests/test_cold_path.py``); this only times them, one user at a time,
with the graph's co-occurrence cache warm for the computed path (its best case)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def time_paths(folder: Path, n_users: int) -> dict:
    from inference.version import open_version

    v = open_version(folder)
    b, g = v.builder, v.graph
    if v.neighbourhoods is None:
        sys.exit(f"{folder} holds no stored neighbourhoods (exported before them)")
    users = np.random.default_rng(0).choice(g.n_users, size=min(n_users, g.n_users), replace=False)
    g.hops.warm()  # every item's co-occurrence row cached: the computed path at its cheapest

    def computed(u: int) -> None:
        items = g.user_items(u)
        b.predictive(u, items, b.neighbourhood(u, items))

    def stored(u: int) -> None:
        items = g.user_items(u)
        nbr, distances = v.neighbourhoods.lookup(u, items)
        b.predictive(u, items, nbr, distances=distances)

    out = {}
    for name, fn in (("computed", computed), ("stored", stored)):
        lat = []
        for u in users.tolist():
            t = time.perf_counter()
            fn(u)
            lat.append(time.perf_counter() - t)
        ms = np.asarray(lat) * 1000
        out[name] = {q: round(float(np.percentile(ms, int(q[1:]))), 3) for q in ("p50", "p99")}
        out[name]["mean"] = round(float(ms.mean()), 3)
        print(f"  {name}: {out[name]} ms per miss", flush=True)
    return out


def time_write(folder: Path) -> dict:
    from inference.version import load_builder
    from training.export.neighbourhoods import write_neighbourhoods

    builder = load_builder(folder)
    with tempfile.TemporaryDirectory() as tmp:
        report = write_neighbourhoods(builder, tmp)
    print(f"  write: {report}", flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version_dir", type=Path)
    ap.add_argument("--users", type=int, default=1000, help="users timed per path [1000]")
    ap.add_argument("--write", action="store_true", help="also time writing every user's tables")
    args = ap.parse_args()
    result = {"version_dir": str(args.version_dir), "per_miss_ms": time_paths(args.version_dir, args.users)}
    if args.write:
        result["write"] = time_write(args.version_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

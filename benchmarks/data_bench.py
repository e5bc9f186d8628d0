"""Time reading, preparing, saving and loading datasets (the figures in docs/benchmarks.md, "Data").

python benchmarks/data_bench.py amazon-beauty amazon-office --datasets ../shared/datasets --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data.dataset import PreparedDataset, prepare  # noqa: E402
from training.data.ingest import read_source  # noqa: E402


def bench(source: Path, repeat: int) -> dict:
    t0 = time.perf_counter()
    raw = read_source(source)
    t1 = time.perf_counter()
    ds = prepare(raw, source.name)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = ds.save(Path(tmp) / source.name)
        t3 = time.perf_counter()
        loads = []
        for _ in range(repeat):
            s = time.perf_counter()
            back = PreparedDataset.load(out)
            loads.append(time.perf_counter() - s)
        assert back.fingerprint == ds.fingerprint
        size = sum(f.stat().st_size for f in out.iterdir())
    return {
        "dataset": source.name,
        "events": len(raw.users),
        "users": ds.n_users,
        "items": ds.n_items,
        "read_s": t1 - t0,
        "prepare_s": t2 - t1,
        "save_s": t3 - t2,
        "load_median_s": statistics.median(loads),
        "load_max_s": max(loads),
        "size_mb": size / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cols = ["dataset", "events", "users", "items", "read_s", "prepare_s", "save_s"]
    cols += ["load_median_s", "load_max_s", "size_mb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name in args.names:
        r = bench(args.datasets / name, args.repeat)
        cells = (f"{r[c]:.3f}" if isinstance(r[c], float) else f"{r[c]}" for c in cols)
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""FAISS search latency/recall and model-store publish/verify/load times.

Prints, for an amazon-beauty-sized catalogue (12,101 items x 128-d) and a synthetic 1M x 64-d one:
build time, search latency at batch 1 and 16 (k=100) and recall@100 against exact search for
IndexFlatIP, IVF (nlist ~ 4*sqrt(n), nprobe grid) and HNSW (M 32, efSearch grid). Then publish, verify,
open and index-load times for a beauty-sized version folder (embeddings + index + a 50 MB encoder.onnx blob).

    python -m benchmarks.faiss_bench                          # everything (run from the repo root)
    python -m benchmarks.faiss_bench --skip-big --queries 200 # beauty size and store only
    python -m benchmarks.faiss_bench --embeddings path/item_embeddings.npy   # real embeddings

Synthetic catalogues are clustered Gaussians (items and queries around shared centres), which is closer to
learned embeddings than isotropic noise; the benchmark says which it used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from model_store import ModelStore
from model_store.index import ItemIndex, build_index, load_index, measure_recall

K = 100


def clustered(n: int, d: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_clusters = max(8, int(math.sqrt(n)))
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    emb = np.empty((n, d), dtype=np.float32)
    step = 100_000  # build in slices: keeps peak memory at one copy of the catalogue
    for s in range(0, n, step):
        m = min(step, n - s)
        emb[s : s + m] = centres[rng.integers(n_clusters, size=m)]
        emb[s : s + m] += 0.5 * rng.standard_normal((m, d), dtype=np.float32)
    q = centres[rng.integers(n_clusters, size=n_queries)] + 0.5 * rng.standard_normal(
        (n_queries, d), dtype=np.float32
    )
    return emb, q.astype(np.float32)


def queries_from_items(emb: np.ndarray, n_queries: int, seed: int) -> np.ndarray:
    """Stand-in user vectors for real item embeddings: the mean of a few random items, plus noise."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(emb), size=(n_queries, 5))
    q = emb[picks].mean(axis=1)
    q += 0.1 * q.std() * rng.standard_normal(q.shape).astype(np.float32)
    return np.ascontiguousarray(q, dtype=np.float32)


def latency_ms(index: ItemIndex, q: np.ndarray, batch: int) -> tuple[float, float]:
    """(p50, p99) milliseconds per search call of `batch` queries."""
    index.search(q[:batch], K)  # warm-up
    times = []
    for s in range(0, len(q) - batch + 1, batch):
        t = time.perf_counter()
        index.search(q[s : s + batch], K)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def bench_catalogue(
    name: str,
    emb: np.ndarray,
    q: np.ndarray,
    nprobes: list[int],
    efs: list[int],
    build_threads: int,
    search_threads: int,
) -> None:
    n, d = emb.shape
    faiss.omp_set_num_threads(build_threads)
    print(
        f"\n## {name}: {n:,} items x {d}-d, {len(q)} queries, k={K}, faiss {faiss.__version__}, "
        f"{build_threads} build / {search_threads} search threads"
    )
    print(
        f"{'index':<30} {'build s':>8} {'b1 p50 ms':>10} {'b1 p99 ms':>10} {'b16 p50 ms':>11} "
        f"{'recall@100':>11}"
    )

    def row(label: str, idx: ItemIndex, build_s: float | None, exact: ItemIndex) -> None:
        faiss.omp_set_num_threads(search_threads)
        b1 = latency_ms(idx, q, 1)
        b16 = latency_ms(idx, q, 16)
        faiss.omp_set_num_threads(build_threads)
        rec = measure_recall(idx, exact, q, K)
        bs = f"{build_s:8.2f}" if build_s is not None else f"{'':>8}"
        print(f"{label:<30} {bs} {b1[0]:10.3f} {b1[1]:10.3f} {b16[0]:11.3f} {rec:11.4f}", flush=True)

    t = time.perf_counter()
    exact = build_index(emb, "exact")
    row("exact (IndexFlatIP)", exact, time.perf_counter() - t, exact)

    nlist = round(4 * math.sqrt(n))
    t = time.perf_counter()
    ivf = build_index(emb, "ivf", nlist=nlist, nprobe=nprobes[0], niter=10)
    ivf_s = time.perf_counter() - t
    for i, p in enumerate(p for p in nprobes if p <= nlist):
        ivf.set_search_params(nprobe=p)
        row(f"ivf nlist={nlist} nprobe={p}", ivf, ivf_s if i == 0 else None, exact)
    del ivf

    t = time.perf_counter()
    hnsw = build_index(emb, "hnsw", M=32, ef_construction=40, ef_search=efs[0])
    hnsw_s = time.perf_counter() - t
    for i, ef in enumerate(efs):
        hnsw.set_search_params(ef_search=ef)
        row(f"hnsw M=32 efSearch={ef}", hnsw, hnsw_s if i == 0 else None, exact)


def bench_store(emb: np.ndarray, blob_mb: int, repeats: int) -> None:
    n, d = emb.shape
    print(
        f"\n## model store: version of {n:,} x {d} float32 embeddings + exact index "
        f"+ {blob_mb} MB encoder.onnx"
    )
    work = Path(tempfile.mkdtemp(prefix="edgerec-store-bench-"))
    try:
        src = work / "export"
        src.mkdir()
        np.save(src / "item_embeddings.npy", emb)
        np.save(src / "popularity.npy", np.ones(n, dtype=np.float32))
        (src / "items.json").write_text(
            json.dumps([{"id": f"B{i:09d}", "title": f"item {i}"} for i in range(n)])
        )
        (src / "encoder.onnx").write_bytes(np.random.default_rng(0).bytes(blob_mb * 1024 * 1024))
        build_index(emb, "exact", out_dir=src)
        total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        store = ModelStore(work / "store")
        pub, ver, opn, load = [], [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            vid = store.publish(src, {"dataset_fingerprint": "bench"})
            pub.append(time.perf_counter() - t)
            t = time.perf_counter()
            store.verify(vid)
            ver.append(time.perf_counter() - t)
            t = time.perf_counter()
            h = store.open_version(vid)
            h.load_npy("item_embeddings.npy")
            h.load_json("items.json")
            opn.append(time.perf_counter() - t)
            t = time.perf_counter()
            load_index(h.path, use_gpu=False)
            load.append(time.perf_counter() - t)
        print(f"version size {total / 2**20:.1f} MiB, {repeats} repeats, median (max) seconds:")
        for label, xs in [
            ("publish (copy+sha256+fsync+rename)", pub),
            ("verify (sha256 of every file)", ver),
            ("open_version (verify) + load npy/json", opn),
            ("load_index (exact, CPU)", load),
        ]:
            print(f"  {label:<40} {statistics.median(xs):7.3f} ({max(xs):.3f})")
    finally:
        for p in work.rglob("*"):
            if p.is_dir():
                os.chmod(p, 0o755)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=12_101)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--embeddings", type=Path, help="real item_embeddings.npy to use for the small catalogue")
    ap.add_argument("--big-items", type=int, default=1_000_000)
    ap.add_argument("--big-dim", type=int, default=64)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument(
        "--isotropic",
        action="store_true",
        help="small catalogue from plain Gaussian noise (worst case for ANN)",
    )
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--big-queries", type=int, default=320)
    ap.add_argument("--blob-mb", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="faiss threads for builds (default: all)")
    ap.add_argument("--search-threads", type=int, default=1, help="faiss threads while timing searches")
    args = ap.parse_args()
    threads = {
        "build_threads": args.threads or faiss.omp_get_max_threads(),
        "search_threads": args.search_threads,
    }

    if args.embeddings:
        emb = np.ascontiguousarray(np.load(args.embeddings, allow_pickle=False), dtype=np.float32)
        q = queries_from_items(emb, args.queries, seed=1)
        label = f"real embeddings {args.embeddings}"
    elif args.isotropic:
        rng = np.random.default_rng(1)
        emb = rng.standard_normal((args.items, args.dim), dtype=np.float32)
        q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        label = "synthetic isotropic Gaussian (beauty size)"
    else:
        emb, q = clustered(args.items, args.dim, args.queries, seed=1)
        label = "synthetic clustered (beauty size)"
    bench_catalogue(label, emb, q, nprobes=[1, 8, 32, 128], efs=[128, 256, 512], **threads)
    bench_store(emb, args.blob_mb, args.repeats)
    if not args.skip_big:
        del emb, q
        big, bq = clustered(args.big_items, args.big_dim, args.big_queries, seed=2)
        size = "1M" if args.big_items == 1_000_000 else f"{args.big_items:,}"
        bench_catalogue(
            f"synthetic clustered {size}", big, bq, nprobes=[8, 32, 128], efs=[128, 256, 512], **threads
        )


if __name__ == "__main__":
    main()

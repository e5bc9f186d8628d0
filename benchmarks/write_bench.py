"""Write-path benchmark: what durability costs. The service's interaction write (the idempotent Lua script of
``Cache.append_interactions``: idempotency record + stream XADD + history RPUSH/LTRIM + cache DEL) against
dedicated redis-server processes that differ only in persistence, side by side in one run:

- ``no-aof``     appendonly no: nothing on disk (a reference, not a configuration to ship)
- ``everysec``   appendonly yes, appendfsync everysec: written to the AOF before the reply, fsynced within
                 ~1 s (a Redis crash loses nothing acknowledged; a machine crash or power loss up to ~1 s)
- ``always``     appendonly yes, appendfsync always: fsynced before the reply (what the shipped configs use)

    python benchmarks/write_bench.py [--duration 5] [--concurrency 1 32] [--dir .edgerec/bench-redis]

Each (concurrency, variant) pair runs for ``--duration`` seconds of closed-loop writes (one item each, a fresh
idempotency key each) from one asyncio process; it prints writes/s and latency percentiles, and the load
average before and after, since the machine may be shared. The data folder must be on the disk whose fsync
you want to measure (the default is under the current directory, git-ignored, not a tmpfs /tmp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.cache import Cache  # noqa: E402
from service.redis_conn import make_client  # noqa: E402

VARIANTS = {
    "no-aof": ["--appendonly", "no"],
    "everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "always": ["--appendonly", "yes", "--appendfsync", "always"],
}
VERSION = "v20260101-000000-000-00000000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(data_dir: Path, args: list[str]) -> tuple[subprocess.Popen, int]:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    cmd = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
           "--dir", str(data_dir), "--save", "", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port, socket_connect_timeout=0.2).ping()
            return proc, port
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


async def drive(url: str, concurrency: int, duration_s: float) -> dict[str, float]:
    cache = Cache(make_client(url, 2.0, max_connections=max(64, concurrency)), "bench", timeout_s=2.0)
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def writer(w: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await cache.append_interactions(f"user-{w}", [f"item-{n % 500}"], None, VERSION, f"{w}-{n}")
            latencies.append(time.perf_counter() - t)
            n += 1

    await cache.ping()
    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await cache.client.aclose()
    ms = np.asarray(latencies) * 1000
    return {"writes_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per (concurrency, variant)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--dir", type=Path, default=Path(".edgerec/bench-redis"), help="parent of data folders")
    args = ap.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="write-bench-", dir=args.dir))
    servers = {v: start_redis(root / v, VARIANTS[v]) for v in args.variants}
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"redis-server: {version}")
    print(f"data under {root.resolve()}; cpus {os.cpu_count()}; load average before {os.getloadavg()}")
    print("\n| concurrency | variant | writes/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    try:
        for conc in args.concurrency:
            for variant in args.variants:
                r = asyncio.run(drive(f"redis://127.0.0.1:{servers[variant][1]}/0", conc, args.duration))
                print(f"| {conc} | {variant} | {r['writes_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average after {os.getloadavg()}")


if __name__ == "__main__":
    main()

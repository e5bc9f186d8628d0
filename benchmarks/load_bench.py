"""Serving load benchmark: the service vs a naive path vs the compute floor, on one model version.

    python benchmarks/load_bench.py --store .edgerec/models [--version V] [--duration 60]

1. compute floor: in this process, the service's encoder (same threads, same length-sorted chunks) + FAISS
   search on prebuilt prompts (no HTTP, no cache, no prompt building) at batch 1, 8 and each concurrency
   level (the best a server could do at that load).
2. service: ``uvicorn service.main:create_app`` in a subprocess (one worker, a dedicated redis-server), driven
   by ``wrk`` (C, one thread, closed loop: each connection sends its next request when the last one answered)
   with ``POST /recommend/{user}`` ``{"k": 10}`` for ``--duration`` seconds per concurrency level, after an
   unmeasured warm-up from an empty cache. Users are drawn with probability proportional to their train
   interactions (``--draw activity``: active users come back more often, so the cache hit ratio is what such
   traffic gives) or uniformly (``--draw uniform``: the worst case for the cache). Variants: "service" (every
   default), "service_no_vector_cache" (``EDGEREC_CACHE_USER_VECTORS=false``: every request runs the
   encoder, so the figures do not rest on the user-vector cache) and, with ``--warm-variant``,
   "service_warmed" (``EDGEREC_WARM_CACHE=true``, measured once every user is warmed) and, with ``--explain``,
   "service_explain" (``"explain": true``; on the "service" process, alternating with its plain runs in ABBA
   order for ``--explain-rounds`` pairs, so ``explain_cost`` is the cost of explanations with the cache and
   the machine's other load alike for both). Each run reports the
   service's own cache hit ratio, encoder-skipped ratio, batch size and stage times, and the load average.
3. naive path: the same load against a plain FastAPI endpoint that runs the PyTorch model per request, scores
   every item and sorts them all (no cache, no batching, no ONNX, no FAISS).

wrk is the load generator because it costs a fraction of one core at these rates (an asyncio Python client
would take a core from the 2 the server has). Install it with ``apt-get install wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WRK_LUA = r"""
local users = {}
for line in io.lines("%(users)s") do users[#users + 1] = line end
local body = '%(body)s'
local headers = {["Content-Type"] = "application/json"}
math.randomseed(%(seed)d)
request = function()
  local u = users[math.random(#users)]
  return wrk.format("POST", "/recommend/" .. u, headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p95_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "mean_us": %%f, "err_connect": %%d, "err_read": %%d, "err_write": %%d, ' ..
    '"err_status": %%d, "err_timeout": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


def percentiles_ms(lat_s: list[float]) -> dict:
    a = np.asarray(lat_s) * 1000
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)}


# ------------------------------------------------------------------------------------------- compute floor
def compute_floor(store: Path, version: str, levels: list[int], seconds: float) -> dict:
    from service.config import Settings
    from service.serving import load_serving_model

    settings = Settings(model_store=store, model_version=version, use_gpu="no")
    model = load_serving_model(settings, version)
    chunk = settings.encode_chunk
    rng = np.random.default_rng(0)
    users = rng.choice(model.graph.n_users, size=min(512, model.graph.n_users), replace=False)
    prompts, seen = [], []
    for u in users.tolist():
        hist = model.graph.user_items(u)
        nbr = model.builder.neighbourhood(u)
        prompts.append(model.builder.predictive(u, hist, nbr))
        seen.append(hist)

    out = {}
    for b in sorted(set(levels)):
        lat, n, i = [], 0, 0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            idx = [(i + j) % len(prompts) for j in range(b)]
            i += b
            t = time.perf_counter()
            # the service's own path: the inference core's rank, length-sorted chunks of EDGEREC_ENCODE_CHUNK
            hist = [seen[j] for j in idx]
            model.rank([prompts[j] for j in idx], hist, hist, 10, chunk)
            lat.append(time.perf_counter() - t)
            n += b
        total = sum(lat)
        out[f"batch_{b}"] = {"batch": b, "calls": len(lat), "rps": round(n / total, 1), **percentiles_ms(lat)}
        print(f"  floor batch {b:4d}: {out[f'batch_{b}']}", flush=True)
    return out


# ------------------------------------------------------------------------------------------- naive path
def naive_app():
    """FastAPI app: PyTorch model per request, every item scored and sorted (uvicorn --factory target)."""
    import torch
    from fastapi import FastAPI

    from graphprompt.graph import BipartiteGraph
    from graphprompt.prompts import PromptBuilder, PromptConfig
    from graphprompt.tokenizer import RecTokenizer
    from inference.torch_encoder import TorchEncoder

    folder = Path(os.environ["NAIVE_VERSION_DIR"])
    cfg = PromptConfig.load(folder / "prompt_config.json")
    graph = BipartiteGraph.load(folder / "graph")
    builder = PromptBuilder(RecTokenizer.load(folder, counts=cfg.tokenizer), graph, cfg)
    encoder = TorchEncoder(folder, device="cpu")
    item_emb = torch.from_numpy(np.load(folder / "item_embeddings.npy"))
    user_ids = json.loads((folder / "user_ids.json").read_text())
    item_ids = json.loads((folder / "item_ids.json").read_text())
    user_index = {u: i for i, u in enumerate(user_ids)}
    app = FastAPI()

    @app.post("/recommend/{user_id}")
    def recommend(user_id: str, body: dict) -> dict:
        u = user_index[user_id]
        hist = graph.user_items(u)
        nbr = builder.neighbourhood(u)
        prompt = builder.predictive(u, hist, nbr)
        batch = PromptBuilder.collate([prompt])
        with torch.inference_mode():
            vec, cand = encoder.encode_full(*batch)
            scores = item_emb @ torch.from_numpy(vec)[0]
            if cand is not None:  # the candidate prior, added to the items the prompt names
                items = batch[0][0] - builder.tok.item_offset
                keep = items >= 0
                scores.index_add_(0, torch.from_numpy(items[keep]), torch.from_numpy(cand[0][keep]))
            scores[torch.from_numpy(hist)] = -float("inf")
            order = torch.argsort(scores, descending=True)[: int(body.get("k", 10))]
        return {"items": [{"id": item_ids[i], "score": float(scores[i])} for i in order.tolist()]}

    @app.get("/readyz")
    def ready() -> dict:
        return {"ready": True}

    return app


# ------------------------------------------------------------------------------------------- load runs
def draw_users(vdir: Path, users: list[str], how: str, n: int = 200_000) -> list[str]:
    """The sequence wrk picks from uniformly: ``n`` users drawn by train activity, or all users shuffled."""
    if how == "uniform":
        out = list(users)
        random.Random(0).shuffle(out)
        return out
    from graphprompt.graph import BipartiteGraph

    deg = BipartiteGraph.load(vdir / "graph").user_degree().astype(np.float64)
    idx = np.random.default_rng(0).choice(len(users), size=n, p=deg / deg.sum())
    return [users[i] for i in idx.tolist()]


def run_wrk(
    base: str, users_file: Path, concurrency: int, seconds: int, seed: int, body: str = '{"k": 10}'
) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA % {"users": users_file, "seed": seed, "body": body})
        lua = f.name
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", lua, base]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    os.unlink(lua)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON ") :])
    errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
    return {
        "concurrency": concurrency,
        "seconds": round(r["duration_us"] / 1e6, 1),
        "requests": r["requests"],
        "rps": round(r["requests"] / (r["duration_us"] / 1e6), 1),
        "p50_ms": r["p50_us"] / 1000,
        "p95_ms": r["p95_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "errors": errors,
        "error_detail": {k: r[k] for k in r if k.startswith("err_")},
    }


def scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    vals: dict[str, float] = {}
    for ln in text.splitlines():
        if ln.startswith("#") or " " not in ln:
            continue
        name, value = ln.rsplit(" ", 1)
        vals[name] = float(value)
    return vals


def delta_stats(before: dict[str, float], after: dict[str, float]) -> dict:
    """What the service's own metrics say about one run (differences of counters across it)."""

    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    look = {res: d(f'edgerec_cache_lookups_total{{result="{res}"}}') for res in ("hit", "miss", "error")}
    n_look = sum(look.values())
    stages = {}
    for st in ("cache", "neighbourhood", "prompt", "encode", "search"):
        c = d(f'edgerec_stage_seconds_count{{stage="{st}"}}')
        stages[st] = round(1000 * d(f'edgerec_stage_seconds_sum{{stage="{st}"}}') / c, 3) if c else None
    n_rec = d("edgerec_recommendations_total")
    fallbacks = {
        k.split('"')[1]: v - before.get(k, 0.0)
        for k, v in after.items()
        if k.startswith("edgerec_fallbacks_total")
    }
    reasons = {res: d(f'edgerec_reason_cache_lookups_total{{result="{res}"}}') for res in ("hit", "miss")}
    n_reasons = sum(reasons.values())
    return {
        "cache_hit_ratio": round(look["hit"] / n_look, 3) if n_look else None,
        # explain: true answers whose reasons came from the version's reason cache (None: no such request)
        "reason_cache_hit_ratio": round(reasons["hit"] / n_reasons, 3) if n_reasons else None,
        "encoder_skipped_ratio": round(d("edgerec_encoder_skipped_total") / n_rec, 3) if n_rec else None,
        "mean_batch_size": round(d("edgerec_batch_size_sum") / max(d("edgerec_batch_size_count"), 1), 2),
        "mean_stage_ms": stages,
        "fallbacks": {k: v for k, v in fallbacks.items() if v},
    }


def uvicorn_cmd(target: str, port: int, extra: list[str]) -> list[str]:
    base = [sys.executable, "-m", "uvicorn", target, "--factory", "--host", "127.0.0.1", "--port", str(port)]
    return [*base, "--no-access-log", "--log-level", "warning", *extra]


def start_process(cmd: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
    )


def stop_process(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


ADMIN_KEY = "loadbench-admin"


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (uvicorn's process and its workers)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def service_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the service's processes have used so far. Per request, it is the cost of a
    request whatever else the machine runs (latency on a shared machine is mostly other people's load)."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def service_memory(pid: int) -> list[dict]:
    """RSS and PSS (MiB) of the service's processes (uvicorn's and its workers'). PSS divides each shared
    page among the processes that map it, so memory-mapped version files count once across workers."""
    out = []
    for p in process_tree(pid):
        try:
            roll = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
        except OSError:
            continue
        kb = {ln.split()[0].rstrip(":"): int(ln.split()[1]) for ln in roll[1:] if ln.split()[-1] == "kB"}
        out.append(
            {
                "pid": p,
                "cmd": cmd,
                "rss_mib": round(kb["Rss"] / 1024, 1),
                "pss_mib": round(kb["Pss"] / 1024, 1),
            }
        )
    return out


def flush_redis(port: int, timeout_s: float = 30.0) -> None:
    """Empty the bench's own redis-server (waiting for it to accept connections): every run starts cold."""
    deadline = time.monotonic() + timeout_s
    cmd = ["redis-cli", "-p", str(port), "FLUSHALL"]
    while subprocess.run(cmd, capture_output=True, text=True).stdout.strip() != "OK":
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not answer FLUSHALL")
        time.sleep(0.2)


def effective_config(env: dict, root: Path) -> dict:
    """The service's settings as its own code reads them from ``env`` (log level included)."""
    code = "from service.config import Settings; print(Settings().model_dump_json())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}


def reload_to(base: str, version: str) -> dict:
    req = urllib.request.Request(
        f"{base}/admin/reload",
        data=json.dumps({"version": version}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": ADMIN_KEY},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def swap_under_load(base: str, users_file: Path, c: int, target: str, window_s: int) -> dict:
    """Load in 2-second wrk windows: ``window_s`` before a hot swap to ``target``, while the service loads
    (and, from the cold-path change on, warms) it, and ``window_s`` after it serves. The windows after vs
    before show whether a promotion is a latency cliff."""

    def window(seed: int) -> dict:
        before, load0 = scrape(base), os.getloadavg()[0]
        r = run_wrk(base, users_file, c, 2, seed=seed)
        r.update(delta_stats(before, scrape(base)), loadavg_1m=[load0, os.getloadavg()[0]])
        return r

    out: dict = {"concurrency": c, "target": target}
    out["before"] = [window(7000 + n) for n in range(window_s // 2)]
    answer: dict = {}
    t0 = time.monotonic()
    th = threading.Thread(target=lambda: answer.update(reload_to(base, target)))
    th.start()
    out["during"] = []
    while th.is_alive():
        out["during"].append(window(8000 + len(out["during"])))
    th.join()
    out["swap_seconds"] = round(time.monotonic() - t0, 1)
    m = scrape(base)  # the service's own account of the warm-up (absent before the cold-path change)
    out["warmed_users"] = m.get("edgerec_swap_warmed_users")
    out["warm_seconds"] = m.get("edgerec_swap_warm_seconds")
    out["reload"] = answer
    out["after"] = [window(9000 + n) for n in range(window_s // 2)]
    for key in ("before", "after"):
        rows = out[key]
        out[f"{key}_p50_ms_median"] = float(np.median([r["p50_ms"] for r in rows]))
        out[f"{key}_p99_ms_max"] = max(r["p99_ms"] for r in rows)
    print(
        f"  swap c={c}: " + json.dumps({k: v for k, v in out.items() if not isinstance(v, list)}), flush=True
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("EDGEREC_HOME", ".edgerec")) / "models")
    ap.add_argument("--version", default=None, help="version id or alias [default: the promoted one]")
    ap.add_argument("--duration", type=int, default=60, help="seconds of load per run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--floor-seconds", type=float, default=10.0, help="seconds per floor batch size")
    ap.add_argument("--floor-batches", type=int, nargs="*", default=[1, 8], help="more floor batch sizes")
    ap.add_argument("--warmup", type=int, default=15, help="unmeasured seconds of load first")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--only-naive", action="store_true", help="just the naive path (no floor, no service)")
    ap.add_argument("--warm-variant", action="store_true", help="also run with EDGEREC_WARM_CACHE=true")
    ap.add_argument(
        "--draw",
        choices=["activity", "uniform"],
        default="activity",
        help="which users ask: proportional to their train interactions, or uniformly [activity]",
    )
    ap.add_argument(
        "--skip-no-vector-cache",
        action="store_true",
        help="no EDGEREC_CACHE_USER_VECTORS=false run",
    )
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="uvicorn workers of the service; several: one service run each (service_w<N> rows, and "
        "the RSS/PSS of each process in memory) [1]",
    )
    ap.add_argument(
        "--swap-to",
        default=None,
        help="after the first service run, hot swap it to this version under load (POST /admin/reload) "
        "and measure 2-s windows before, during and after (the swap section)",
    )
    ap.add_argument("--swap-window", type=int, default=10, help="seconds measured before and after a swap")
    ap.add_argument("--log-level", default="WARNING", help="EDGEREC_LOG_LEVEL of the service [WARNING]")
    ap.add_argument(
        "--service-root",
        type=Path,
        default=ROOT,
        help="source tree the service runs from (e.g. a `git worktree` of older code, for before/after "
        "runs with one bench script) [this checkout]",
    )
    ap.add_argument(
        "--explain",
        action="store_true",
        help='also measure {"k": 10, "explain": true} on the same service process, alternating with the '
        "plain requests (service_explain rows and explain_cost: the cost of explanations, same run)",
    )
    ap.add_argument(
        "--explain-rounds",
        type=int,
        default=4,
        help="with --explain: plain/explain pairs per concurrency level (ABBA order; even is balanced), "
        "--duration seconds each [4]",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load_bench.json")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")

    from model_store import ModelStore

    store = ModelStore(args.store)
    version = store.resolve(args.version or "current")
    vdir = store.path(version)
    meta = json.loads((vdir / "manifest.json").read_text())
    users = json.loads((vdir / "user_ids.json").read_text())
    print(
        f"model {version} ({len(users)} users); dataset {meta.get('extra', {}).get('dataset', '?')}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="edgerec-load-"))
    users_file = work / "users.txt"
    users_file.write_text("\n".join(draw_users(vdir, users, args.draw)) + "\n")
    result: dict = {
        "version": version,
        "dataset": meta.get("extra", {}).get("dataset"),
        "n_users": len(users),
        "cpus": os.cpu_count(),
        "duration_s": args.duration,
        "draw": args.draw,
        "warmup_s": args.warmup,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "service_root": str(args.service_root),
        "service_commit": subprocess.run(
            ["git", "-C", str(args.service_root), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "loadavg_at_start": list(os.getloadavg()),
        "config": {},
        "memory": {},
    }
    if args.skip_naive and args.out.is_file():  # keep the naive rows of the last run that measured them
        previous = json.loads(args.out.read_text())
        if previous.get("naive"):
            result["naive"] = previous["naive"]
            result["naive_from"] = previous.get("naive_from", previous.get("started_utc"))

    print("compute floor (encoder + search, in-process):", flush=True)
    levels = [*args.floor_batches, *args.concurrency]
    floor_s = args.floor_seconds
    result["floor"] = {} if args.only_naive else compute_floor(args.store, version, levels, floor_s)

    redis_port = free_port()
    redis_proc = start_process(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
        "yes",
         "--dir", str(work)],
        dict(os.environ),
        work / "redis.log",
    )  # fmt: skip
    procs = [redis_proc]
    try:
        env = dict(os.environ)
        env.update(
            EDGEREC_MODEL_STORE=str(args.store.resolve()),
            EDGEREC_MODEL_VERSION=version,
            EDGEREC_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            EDGEREC_LOG_LEVEL=args.log_level,
            EDGEREC_MODEL_POLL_S="0",
            EDGEREC_ADMIN_API_KEY=ADMIN_KEY,
            PYTHONPATH=str(args.service_root),
        )
        # (label, extra environment, warm-up seconds, arms: (row label, request body) measured in turn)
        service_arms = [("service", PLAIN)]
        if args.explain:
            service_arms.append(("service_explain", EXPLAIN))
        variants = [] if args.only_naive else [("service", {}, args.warmup, service_arms)]
        for w in [] if args.only_naive else args.workers[1:]:
            variants.append((f"service_w{w}", {"_workers": w}, args.warmup, [(f"service_w{w}", PLAIN)]))
        if not (args.only_naive or args.skip_no_vector_cache):
            no_vectors = {"EDGEREC_CACHE_USER_VECTORS": "false"}
            variants.append(
                ("service_no_vector_cache", no_vectors, args.warmup, [("service_no_vector_cache", PLAIN)])
            )
        if args.warm_variant and not args.only_naive:
            variants.append(
                ("service_warmed", {"EDGEREC_WARM_CACHE": "true"}, 0, [("service_warmed", PLAIN)])
            )
        for label, extra_env, warmup, arms in variants:
            port = free_port()
            workers = extra_env.pop("_workers", args.workers[0])
            env.update(extra_env, EDGEREC_REDIS_PREFIX=f"loadbench{port}")  # a fresh, empty cache
            env["EDGEREC_WORKERS"] = str(workers)
            flush_redis(redis_port)
            result["config"][label] = effective_config(env, args.service_root)
            cmd = uvicorn_cmd("service.main:create_app", port, ["--workers", str(workers)])
            svc = start_process(cmd, env, work / f"{label}.log", cwd=args.service_root)
            procs.append(svc)
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/readyz")
            if extra_env.get("EDGEREC_WARM_CACHE"):
                t = time.monotonic()
                while scrape(base).get("edgerec_cache_warm_progress", 0.0) < 1.0:
                    time.sleep(1)
                result["warm_seconds"] = round(time.monotonic() - t, 1)
                print(f"  cache warmed in {result['warm_seconds']} s", flush=True)
            if warmup:
                # Unmeasured: fills the cache as earlier traffic would have (each run reports its hit ratio).
                run_wrk(base, users_file, args.concurrency[0], warmup, seed=1)
            for arm, _ in arms:
                result[arm] = []
            # Several arms alternate on one process, in ABBA order (the cache fills as runs go: whichever arm
            # ran second would find it warmer), each run with users of its own (a run must not find the users
            # the run before it just cached): drift of the cache and of the machine's other load falls on
            # every arm alike.
            rounds = args.explain_rounds if len(arms) > 1 else 1
            for c in args.concurrency:
                for n in range(rounds):
                    for k, (arm, body) in enumerate(arms if n % 2 == 0 else arms[::-1]):
                        before, load0, cpu0 = scrape(base), os.getloadavg()[0], service_cpu_seconds(svc.pid)
                        seed = c + 1000 * n + 100 * k
                        r = run_wrk(base, users_file, c, args.duration, seed=seed, body=body)
                        cpu = service_cpu_seconds(svc.pid) - cpu0
                        r.update(delta_stats(before, scrape(base)), loadavg_1m=[load0, os.getloadavg()[0]])
                        if body != EXPLAIN:  # what it counted were the last explain run's requests in flight
                            r["reason_cache_hit_ratio"] = None
                        r["service_cpu_ms_per_request"] = round(1000 * cpu / max(r["requests"], 1), 3)
                        if rounds > 1:
                            r["round"] = n
                        result[arm].append(r)
                        print(f"  {arm} c={c} round {n}: {r}", flush=True)
            result["memory"][label] = service_memory(svc.pid)
            print(f"  {label} memory: {result['memory'][label]}", flush=True)
            if args.swap_to and label == "service":
                result["swap"] = swap_under_load(
                    base, users_file, args.concurrency[0], args.swap_to, args.swap_window
                )
            stop_process(svc)
            for k in extra_env:
                env.pop(k)

        if not args.skip_naive:
            port = free_port()
            env.update(NAIVE_VERSION_DIR=str(vdir))
            cmd = uvicorn_cmd("load_bench:naive_app", port, ["--app-dir", str(ROOT / "benchmarks")])
            naive = start_process(cmd, env, work / "naive.log")
            procs.append(naive)
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/readyz")
            result["naive"] = []
            for c in args.concurrency:
                load0 = os.getloadavg()[0]
                r = run_wrk(base, users_file, c, args.duration, seed=c)
                r["loadavg_1m"] = [load0, os.getloadavg()[0]]
                result["naive"].append(r)
                print(f"  naive   c={c}: {r}", flush=True)
            stop_process(naive)
    finally:
        for p in procs:
            stop_process(p)
        shutil.rmtree(work, ignore_errors=True)

    if "service_explain" in result:
        result["explain_cost"] = explain_cost(result)
    print_summary(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _row(path: str, clients: str, r: dict, errors: str) -> str:
    return (
        f"| {path} | {clients} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
        f"| {errors} |"
    )


SERVICE_RUNS = ("service", "service_explain", "service_no_vector_cache", "service_warmed")
PLAIN, EXPLAIN = '{"k": 10}', '{"k": 10, "explain": true}'


def print_summary(r: dict) -> None:
    print("\n| path | clients | req/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    workers = tuple(k for k in r if k.startswith("service_w"))
    for path in SERVICE_RUNS + workers + ("naive",):
        for row in r.get(path, []):
            name = f"{path} (round {row['round']})" if "round" in row else path
            print(_row(name, str(row["concurrency"]), row, str(row["errors"])))
    for key, row in r["floor"].items():
        print(_row(f"floor ({key.replace('_', ' ')})", "-", row, "-"))
    nav = {row["concurrency"]: row for row in r.get("naive", [])}
    for label in SERVICE_RUNS + workers:
        for row in r.get(label, []):
            c = row["concurrency"]
            floor = r["floor"].get(f"batch_{c}")
            name = f"{label} c={c}" + (f" round {row['round']}" if "round" in row else "")
            msg = f"{name}: p99 {row['p99_ms']:.1f} ms, errors {row['errors']}"
            msg += f", cache hits {row['cache_hit_ratio']}, encoder skipped {row['encoder_skipped_ratio']}"
            if row.get("reason_cache_hit_ratio") is not None:
                msg += f", reason-cache hits {row['reason_cache_hit_ratio']}"
            msg += f", load average {row['loadavg_1m'][0]:.1f}-{row['loadavg_1m'][1]:.1f}"
            if "service_cpu_ms_per_request" in row:
                msg += f", service CPU {row['service_cpu_ms_per_request']:.2f} ms per request"
            if c in nav and nav[c]["rps"]:
                msg += f", {row['rps'] / nav[c]['rps']:.1f}x naive throughput"
            if floor:
                msg += f", p50 {row['p50_ms'] / floor['p50_ms']:.2f}x the floor's batch-{c} latency"
            print(msg)
    for row in r.get("explain_cost", []):
        print(
            f"explain c={row['concurrency']}: p50 {row['p50_change_pct']:+.1f} %, p99 "
            f"{row['p99_change_pct']:+.1f} %, throughput {row['rps_change_pct']:+.1f} %, service CPU per "
            f"request {row.get('service_cpu_change_pct', float('nan')):+.1f} % (median of {row['rounds']} "
            "rounds of service_explain against the adjacent service run, same process)"
        )


def explain_cost(r: dict) -> list[dict]:
    """Per concurrency level, how much ``explain: true`` changed p50, p99 and throughput (percent): the
    median over rounds of each round's explain run against that round's plain run (adjacent in time)."""
    plain = {(row["concurrency"], row.get("round", 0)): row for row in r.get("service", [])}
    ratios: dict[int, list[dict]] = {}
    for row in r.get("service_explain", []):
        base = plain.get((row["concurrency"], row.get("round", 0)))
        keys = [k for k in ("p50_ms", "p99_ms", "rps", "service_cpu_ms_per_request") if k in row]
        if base and all(base.get(k) for k in keys):
            ratios.setdefault(row["concurrency"], []).append({k: row[k] / base[k] - 1 for k in keys})
    return [
        {
            "concurrency": c,
            "rounds": len(rs),
            **{
                f"{k.removesuffix('_ms').removesuffix('_ms_per_request')}_change_pct": round(
                    100 * float(np.median([x[k] for x in rs])), 1
                )
                for k in rs[0]
            },
        }
        for c, rs in ratios.items()
    ]


if __name__ == "__main__":
    main()

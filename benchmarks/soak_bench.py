"""Soak benchmark: the service as it ships, under mixed load for long, through a hot swap and a Redis crash.

    python benchmarks/soak_bench.py --store STORE [--version-b V] [--duration 1800] [--concurrency 64]

- **Service**: ``edgerec serve`` (uvicorn, one worker) with every setting at its default (log level INFO,
  JSON logs, access log on, store poller every 10 s); only the bind address, the port, the model store, the
  Redis URL and ``EDGEREC_HOME`` (a temporary folder) are set, and inherited ``EDGEREC_*`` variables are
  dropped (``--env KEY=VALUE`` tunes one, and is recorded). It serves the store's promoted (CURRENT) version.
- **Redis**: the bench's own redis-server on a free port, in a fresh data folder, AOF on with fsync before
  each reply, as the service's embedded server runs it (``service/embedded_redis.py``).
- **Load**: ``wrk`` (C, one thread, closed loop) with ``--concurrency`` connections: ``--write-share`` of the
  requests are ``POST /users/{u}/interactions`` (one catalogue item drawn uniformly, a unique
  Idempotency-Key), the rest ``POST /recommend/{u}`` ``{"k": 10}``; users are drawn by train activity (as
  ``load_bench.py``), plus 1 % unknown users. wrk runs in consecutive ``--sample-s`` windows (new connections
  each), so each window has its own p50/p99; its Lua script sorts every answer by status and, for a 503, by
  what its body and headers say. wrk's own CPU is recorded per window (a few % of a core at 64 clients).
- **Events**: at 1/3 of the run the second version is promoted in the store and the service's poller swaps
  to it (the production path); at 2/3 the redis-server is killed with SIGKILL and, ``--redis-down-s`` later
  (a supervisor's restart delay), started again on the same port and data folder. The store's CURRENT is
  restored at the end.
- **Samples** (each window): requests, p50/p99/max, answers by kind, the service's RSS/PSS (its process
  tree), its CPU and wrk's, Redis ``used_memory``, keys and stream entries, the 1-minute load average, the
  served version, the service log's size and the service's own cache/fallback/shedding counters.

Errors are everything except 200/201 and the documented 503s: a write's ``stored: false`` / ``stored:
"unknown"`` with Retry-After (Redis could not store it; a retry with the same key is safe), and a
recommendation shed with Retry-After (prompt pool full, overload shedding). Any other 503 (e.g. "no model
loaded" after start-up), a 503 without Retry-After, any other status and any socket error or timeout is an
error. At the end, the acknowledged writes are checked against the interaction stream's entries (an
acknowledged write must survive the crash).

Output: ``--out`` (JSON) and the same name with ``.png`` (p50/p99, RSS and Redis memory, answers by kind over
time, with the swap and the restart marked), and a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_procs import RedisProc  # noqa: E402

from benchmarks.load_bench import (  # noqa: E402
    delta_stats,
    draw_users,
    effective_config,
    free_port,
    scrape,
    service_cpu_seconds,
    service_memory,
    start_process,
    stop_process,
    wait_ready,
)

WRK_LUA = r"""
local users, items = {}, {}
for line in io.lines("%(users)s") do users[#users + 1] = line end
for line in io.lines("%(items)s") do items[#items + 1] = line end
local write_share = %(write_share)f
local json = {["Content-Type"] = "application/json"}
local n = 0
local threads = {}
counts = {}
math.randomseed(%(seed)d)
setup = function(thread) threads[#threads + 1] = thread end
request = function()
  local u = users[math.random(#users)]
  if math.random() < write_share then
    n = n + 1
    local h = {["Content-Type"] = "application/json", ["Idempotency-Key"] = "soak-%(seed)d-" .. n}
    local body = '{"items": [' .. items[math.random(#items)] .. ']}'
    return wrk.format("POST", "/users/" .. u .. "/interactions", h, body)
  end
  return wrk.format("POST", "/recommend/" .. u, json, '{"k": 10}')
end
response = function(status, headers, body)
  local key = tostring(status)
  if status == 201 and body:find('"replayed":%%s*true') then key = "201 replayed"
  elseif status == 503 then
    if body:find('"stored":%%s*false') then key = "503 stored false"
    elseif body:find('"stored":%%s*"unknown"') then key = "503 stored unknown"
    elseif body:find("prompt jobs running or waiting", 1, true) then key = "503 shed"
    elseif body:find("no model loaded", 1, true) then key = "503 no model" end
    if not (headers["Retry-After"] or headers["retry-after"]) then key = key .. " no retry-after" end
  end
  counts[key] = (counts[key] or 0) + 1
end
done = function(summary, latency, requests)
  local parts = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do parts[#parts + 1] = string.format('"%%s": %%d', k, v) end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, ' ..
    '"socket": {"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d}, "answers": [{%%s}]}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, table.concat(parts, ", ")))
end
"""

OK_ANSWERS = {"200": "recommend 200", "201": "write 201", "201 replayed": "write 201 replayed"}
DOCUMENTED_503 = {
    "503 stored false": "write 503 stored false",
    "503 stored unknown": "write 503 stored unknown",
    "503 shed": "recommend 503 shed (prompt pool full)",
}


# ------------------------------------------------------------------------------------------- pure parts
def classify(answers: dict[str, int], socket_errors: dict[str, int]) -> dict:
    """One window's answers (the Lua script's keys: status, or "503 stored false" etc., with " no retry-after"
    when a 503 lacked the header) and wrk's socket errors, sorted into ok / documented 503s / errors."""
    out: dict = {"ok": {}, "documented_503": {}, "errors": {}}
    for key, n in answers.items():
        if key in OK_ANSWERS:
            out["ok"][OK_ANSWERS[key]] = out["ok"].get(OK_ANSWERS[key], 0) + n
        elif key in DOCUMENTED_503:
            out["documented_503"][DOCUMENTED_503[key]] = n
        else:
            out["errors"][f"status {key}"] = out["errors"].get(f"status {key}", 0) + n
    for kind, n in socket_errors.items():
        if n:
            out["errors"][f"socket {kind}"] = n
    for group in ("ok", "documented_503", "errors"):
        out[f"n_{group}"] = sum(out[group].values())
    return out


def slope_per_hour(t_s: list[float], values: list[float | None]) -> float | None:
    """Least-squares slope of ``values`` over ``t_s`` (seconds), in units per hour; None with < 3 points."""
    pts = [(t, v) for t, v in zip(t_s, values, strict=True) if v is not None]
    if len(pts) < 3:
        return None
    t, v = np.asarray(pts, dtype=np.float64).T
    return float(np.polyfit(t / 3600.0, v, 1)[0])


def second_half(windows: list[dict], duration_s: float, key: str) -> tuple[list[float], list]:
    rows = [w for w in windows if w["t_s"] >= duration_s / 2]
    return [w["t_s"] for w in rows], [w.get(key) for w in rows]


def totals(windows: list[dict]) -> dict:
    """Run totals of the windows' classified answers."""
    out: dict = {"requests": 0, "ok": {}, "documented_503": {}, "errors": {}}
    for w in windows:
        out["requests"] += w["requests"]
        for group in ("ok", "documented_503", "errors"):
            for k, n in w["answers"][group].items():
                out[group][k] = out[group].get(k, 0) + n
    for group in ("ok", "documented_503", "errors"):
        out[f"n_{group}"] = sum(out[group].values())
    return out


def summarize(windows: list[dict], events: list[dict], duration_s: float) -> dict:
    """The run's verdicts: errors outside the documented 503s (goal 0), latency, memory slopes."""
    tot = totals(windows)
    p99 = [w["p99_ms"] for w in windows if w["requests"]]
    out: dict = {
        "requests": tot["requests"],
        "rps_mean": round(tot["requests"] / max(sum(w["seconds"] for w in windows), 1e-9), 1),
        "errors": tot["errors"],
        "n_errors": tot["n_errors"],
        "documented_503": tot["documented_503"],
        "n_documented_503": tot["n_documented_503"],
        "ok": tot["ok"],
        "p99_ms_median_of_windows": round(float(np.median(p99)), 1) if p99 else None,
        "p99_ms_max_of_windows": round(max(p99), 1) if p99 else None,
        "p50_ms_median_of_windows": (
            round(float(np.median([w["p50_ms"] for w in windows if w["requests"]])), 1) if p99 else None
        ),
    }
    for key, name in (("service_rss_mib", "service_rss"), ("redis_used_memory_mib", "redis_used_memory")):
        t, v = second_half(windows, duration_s, key)
        s = slope_per_hour(t, v)
        out[f"{name}_mib_per_hour_second_half"] = None if s is None else round(s, 2)
        vals = [x for x in v if x is not None]
        out[f"{name}_mib_second_half"] = [min(vals), max(vals)] if vals else None
    late = [w for w in windows if w["t_s"] >= duration_s / 2]
    late_s = sum(w["seconds"] for w in late)
    stored_per_h = sum(w["writes_stored"] for w in late) / late_s * 3600 if late_s else 0.0
    redis_slope = out["redis_used_memory_mib_per_hour_second_half"]
    out["redis_bytes_per_stored_write"] = (
        round(redis_slope * 2**20 / stored_per_h) if redis_slope is not None and stored_per_h else None
    )
    for ev in events:
        around = [w for w in windows if ev["t_s"] - 30 <= w["t_s"] <= ev["t_s"] + 60]
        ev["p99_ms_max_around"] = max((w["p99_ms"] for w in around if w["requests"]), default=None)
        ev["documented_503_around"] = sum(w["answers"]["n_documented_503"] for w in around)
        ev["errors_around"] = sum(w["answers"]["n_errors"] for w in around)
    return out


# ------------------------------------------------------------------------------------------- processes
class RedisServer(RedisProc):
    """The bench's redis-server: the tests' ``RedisProc`` (AOF with fsync before each reply, as
    ``service/embedded_redis.py``) on a fixed port and data folder, so a restart after SIGKILL finds the same
    data at the same address."""

    def start_timed(self, timeout_s: float = 60.0) -> float:
        """Start it and return the seconds until it answers PING (AOF loaded)."""
        t0 = time.monotonic()
        self.start(timeout_s)
        return time.monotonic() - t0

    def info(self) -> dict:
        """``used_memory`` (MiB), keys and the interaction streams' entries; {} while it is down."""
        import redis

        try:
            r = redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=0.5)
            mem = r.info("memory")
            streams = list(r.scan_iter(match="*:interactions:*", _type="stream", count=1000))
            return {
                "used_memory_mib": round(mem["used_memory"] / 2**20, 2),
                "used_memory_rss_mib": round(mem["used_memory_rss"] / 2**20, 2),
                "keys": r.dbsize(),
                "stream_entries": sum(r.xlen(k) for k in streams),
            }
        except redis.RedisError:
            return {}


def run_window(
    base: str, lua: Path, concurrency: int, seconds: int, seed: int, users: Path, items: Path, share: float
) -> dict:
    """One wrk run of ``seconds``: latency percentiles, answers by kind and wrk's own CPU seconds."""
    lua.write_text(WRK_LUA % {"users": users, "items": items, "write_share": share, "seed": seed})
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), base]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # wrk's rusage: the load generator's CPU
    proc.returncode = os.waitstatus_to_exitcode(status)
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text[-2000:]}")
    r = json.loads(line[len("WRKJSON ") :])
    return {
        "seconds": round(r["duration_us"] / 1e6, 2),
        "requests": r["requests"],
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "raw_answers": r["answers"][0],
        "socket_errors": r["socket"],
        "generator_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def served_version(metrics: dict[str, float]) -> str | None:
    return next(
        (k.split('"')[1] for k, v in metrics.items() if k.startswith("edgerec_model_info") and v), None
    )


def safe_scrape(base: str) -> dict[str, float]:
    try:
        return scrape(base)
    except OSError:
        return {}


def log_summary(path: Path) -> dict:
    """The service log's size, lines, and its WARNING/ERROR messages counted (JSON lines)."""
    out: dict = {"bytes": path.stat().st_size if path.exists() else 0, "lines": 0, "by_level": {}, "top": {}}
    if not path.exists():
        return out
    with path.open(errors="replace") as f:
        for line in f:
            out["lines"] += 1
            quiet = '"WARNING"' not in line and '"ERROR"' not in line and '"CRITICAL"' not in line
            if quiet and line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
                level, msg = rec.get("level", "?"), str(rec.get("message", rec.get("msg", "")))[:120]
            except ValueError:
                level, msg = "unparsed", line.strip()[:120]
            out["by_level"][level] = out["by_level"].get(level, 0) + 1
            out["top"][f"{level}: {msg}"] = out["top"].get(f"{level}: {msg}", 0) + 1
    out["top"] = dict(sorted(out["top"].items(), key=lambda kv: -kv[1])[:15])
    return out


# ------------------------------------------------------------------------------------------- the run
class Events(threading.Thread):
    """The hot swap at ``t_swap`` and the Redis crash at ``t_restart`` (seconds after ``t0``), restarted
    ``down_s`` later."""

    def __init__(self, t0, t_swap, t_restart, down_s, store, version_b, base, redis_server) -> None:
        super().__init__(daemon=True)
        self.t0, self.t_swap, self.t_restart, self.down_s = t0, t_swap, t_restart, down_s
        self.store, self.version_b, self.base, self.redis = store, version_b, base, redis_server
        self.log: list[dict] = []
        self.error: BaseException | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sleep_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now()))

    def say(self, ev: dict) -> None:
        self.log.append(ev)
        extra = {k: v for k, v in ev.items() if k not in ("event", "t_s")}
        print(f"  [{ev['t_s']:.0f}s] {ev['event']}: {extra}", flush=True)

    def run(self) -> None:
        try:
            self.sleep_until(self.t_swap)
            ev = {"event": "hot swap", "t_s": round(self.now(), 1), "to": self.version_b}
            self.store.promote(self.version_b)  # the poller (EDGEREC_MODEL_POLL_S) picks it up
            while served_version(safe_scrape(self.base)) != self.version_b:
                if self.now() - ev["t_s"] > 300:
                    raise RuntimeError(
                        f"the service did not serve {self.version_b} 300 s after its promotion"
                    )
                time.sleep(0.5)
            ev["serving_after_s"] = round(self.now() - ev["t_s"], 1)
            self.say(ev)
            self.sleep_until(self.t_restart)
            ev = {"event": "redis restart", "t_s": round(self.now(), 1), "down_s": self.down_s}
            self.redis.kill()
            time.sleep(self.down_s)
            ev["aof_load_s"] = round(self.redis.start_timed(), 2)
            self.say(ev)
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            self.error = exc


def prepare_inputs(work: Path, vdir: Path, vdir_b: Path | None = None) -> tuple[Path, Path]:
    """users.txt (URL-quoted ids drawn by train activity, plus 1 % unknown users) and items.txt (JSON
    strings of the catalogue), the lists the Lua script draws from. With ``vdir_b`` only the items both
    versions know: a write of an item the swapped-to version lacks is a correct 422, not a service error."""
    users = json.loads((vdir / "user_ids.json").read_text())
    drawn = draw_users(vdir, users, "activity", n=100_000)
    drawn += [f"soak-unknown-{i % 100}" for i in range(len(drawn) // 100)]
    users_file, items_file = work / "users.txt", work / "items.txt"
    users_file.write_text("\n".join(urllib.parse.quote(u, safe="") for u in drawn) + "\n")
    items = json.loads((vdir / "item_ids.json").read_text())
    if vdir_b is not None:
        known_b = set(json.loads((vdir_b / "item_ids.json").read_text()))
        items = [i for i in items if i in known_b]
    items_file.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return users_file, items_file


def service_env(args, work: Path, port: int, redis_port: int) -> tuple[dict, list[str]]:
    """The environment of ``edgerec serve``: defaults, except where to listen and what to use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEREC_")}
    dropped = sorted(k for k in os.environ if k.startswith("EDGEREC_"))
    env.setdefault("OMP_NUM_THREADS", "1")  # as the Docker image sets it
    env.update(
        EDGEREC_HOME=str(work / "home"),
        EDGEREC_MODEL_STORE=str(args.store.resolve()),
        EDGEREC_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        EDGEREC_HOST="127.0.0.1",
        EDGEREC_PORT=str(port),
        PYTHONPATH=str(ROOT),
    )
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    return env, dropped


def pick_version_b(store, version_a: str, wanted: str | None) -> tuple[str, bool]:
    """The version to swap to: ``wanted``, else the newest other version, else a copy of A published now."""
    if wanted:
        return store.resolve(wanted), False
    others = [v.version for v in store.list() if v.version != version_a]
    if others:
        return others[-1], False
    return store.publish(store.path(version_a), {"extra": {"soak_bench": f"copy of {version_a}"}}), True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("EDGEREC_HOME", ".edgerec")) / "models")
    ap.add_argument(
        "--version-b",
        default=None,
        help="version promoted at 1/3 of the run [the newest other version in the store; none: a copy of "
        "the CURRENT one is published]",
    )
    ap.add_argument("--duration", type=int, default=1800, help="seconds of load [1800]")
    ap.add_argument("--concurrency", type=int, default=64, help="wrk connections [64]")
    ap.add_argument("--write-share", type=float, default=0.10, help="share of interaction writes [0.10]")
    ap.add_argument(
        "--redis-down-s", type=float, default=5.0, help="seconds between the SIGKILL and the restart [5]"
    )
    ap.add_argument("--sample-s", type=int, default=10, help="seconds per window/sample [10]")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the service (a tuned run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")

    from model_store import ModelStore

    store = ModelStore(args.store)
    version_a = store.current()
    version_b, published = pick_version_b(store, version_a, args.version_b)
    if version_b == version_a:
        sys.exit(f"--version-b is the CURRENT version {version_a}: nothing to swap to")
    vdir = store.path(version_a)
    work = Path(tempfile.mkdtemp(prefix="edgerec-soak-"))
    users_file, items_file = prepare_inputs(work, vdir, store.path(version_b))
    (work / "redis").mkdir()
    redis_server = RedisServer(work / "redis", port=free_port())
    port = free_port()
    env, dropped = service_env(args, work, port, redis_server.port)
    log_path = work / "service.log"
    base = f"http://127.0.0.1:{port}"
    result: dict = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "store": str(args.store.resolve()),
        "version_a": version_a,
        "version_b": version_b,
        "version_b_published_by_bench": published,
        "dataset": json.loads((vdir / "manifest.json").read_text()).get("extra", {}).get("dataset"),
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "write_share": args.write_share,
        "sample_s": args.sample_s,
        "cpus": os.cpu_count(),
        "load_generator": "wrk -t1, Lua script (benchmarks/soak_bench.py WRK_LUA), one run per window",
        "service_command": "edgerec serve",
        "service_env_set": {
            k: v for k, v in env.items() if k.startswith("EDGEREC_") or k == "OMP_NUM_THREADS"
        },
        "inherited_edgerec_env_dropped": dropped,
        "config": effective_config(env, ROOT),
        "loadavg_at_start": list(os.getloadavg()),
    }
    print(
        f"soak: {version_a} -> {version_b} at {args.duration // 3} s, redis restart at "
        f"{2 * args.duration // 3} s; {args.duration} s at {args.concurrency} clients, "
        f"{args.write_share:.0%} writes; log level {result['config'].get('log_level')}; work {work}",
        flush=True,
    )
    svc, windows, events, ok = None, [], None, False
    try:
        redis_server.start_timed()
        edgerec = shutil.which("edgerec", path=str(Path(sys.executable).parent)) or "edgerec"
        svc = start_process([edgerec, "serve"], env, log_path, cwd=work)
        wait_ready(f"{base}/readyz")
        t0 = time.monotonic()
        t_swap, t_restart = args.duration / 3, 2 * args.duration / 3
        events = Events(t0, t_swap, t_restart, args.redis_down_s, store, version_b, base, redis_server)
        events.start()
        before, cpu0 = safe_scrape(base), service_cpu_seconds(svc.pid)
        lua = work / "soak.lua"
        n = 0
        while (left := args.duration - (time.monotonic() - t0)) >= 1:
            secs = int(min(args.sample_s, left))
            t_start = time.monotonic() - t0
            w = run_window(base, lua, args.concurrency, secs, n, users_file, items_file, args.write_share)
            t_end = time.monotonic() - t0
            after, cpu1 = safe_scrape(base), service_cpu_seconds(svc.pid)
            mem = service_memory(svc.pid)
            rinfo = redis_server.info()
            w["answers"] = classify(w.pop("raw_answers"), w["socket_errors"])
            w.update(
                window=n,
                t_s=round((t_start + t_end) / 2, 1),
                t_start_s=round(t_start, 1),
                rps=round(w["requests"] / max(w["seconds"], 1e-9), 1),
                writes_stored=w["answers"]["ok"].get("write 201", 0),
                service_rss_mib=round(sum(p["rss_mib"] for p in mem), 1),
                service_pss_mib=round(sum(p["pss_mib"] for p in mem), 1),
                service_cpu_pct=round(100 * (cpu1 - cpu0) / (t_end - t_start), 1),
                generator_cpu_pct=round(100 * w.pop("generator_cpu_s") / (t_end - t_start), 1),
                redis_used_memory_mib=rinfo.get("used_memory_mib"),
                redis_keys=rinfo.get("keys"),
                redis_stream_entries=rinfo.get("stream_entries"),
                loadavg_1m=os.getloadavg()[0],
                served_version=served_version(after),
                service_log_mib=round(log_path.stat().st_size / 2**20, 1),
            )
            if before and after:
                w["service_stats"] = delta_stats(before, after)
                shed = "edgerec_prompt_pool_rejected_total"
                w["service_stats"]["prompt_pool_rejected"] = after.get(shed, 0.0) - before.get(shed, 0.0)
            before, cpu0 = after or before, cpu1
            windows.append(w)
            a = w["answers"]
            print(
                f"  [{w['t_s']:6.0f}s] {w['rps']:6.0f} req/s p50 {w['p50_ms']:7.1f} "
                f"p99 {w['p99_ms']:7.1f} ms "
                f"ok {a['n_ok']} 503doc {a['n_documented_503']} err {a['n_errors']} | rss "
                f"{w['service_rss_mib']} MiB redis {w['redis_used_memory_mib']} MiB | cpu svc "
                f"{w['service_cpu_pct']}% wrk {w['generator_cpu_pct']}% | load {w['loadavg_1m']:.1f}",
                flush=True,
            )
            n += 1
            if svc.poll() is not None:
                raise RuntimeError(f"the service exited ({svc.returncode}) at {t_end:.0f} s; see {log_path}")
        events.join(timeout=120)
        if events.error is not None:
            raise events.error
        ok = True
    finally:
        if svc is not None:
            stop_process(svc)
        final_redis = redis_server.info()
        redis_server.stop()
        if store.current() != version_a:  # leave the store as we found it
            store.promote(version_a)
        result["windows"] = windows
        result["events"] = events.log if events is not None else []
        result["service_log"] = log_summary(log_path)
        acked = sum(w["writes_stored"] for w in windows)
        unknown = sum(w["answers"]["documented_503"].get("write 503 stored unknown", 0) for w in windows)
        entries = final_redis.get("stream_entries")
        result["durability"] = {
            "writes_acknowledged": acked,
            "writes_outcome_unknown": unknown,
            "stream_entries_at_end": entries,
            "acknowledged_writes_missing": None if entries is None else max(0, acked - entries),
        }
        result["loadavg_at_end"] = list(os.getloadavg())
        result["ok"] = ok
        if windows:
            result["summary"] = summarize(windows, result["events"], args.duration)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        if windows:
            plot(result, args.out.with_suffix(".png"))
            print_summary(result)
        print(f"wrote {args.out}" + (f" and {args.out.with_suffix('.png')}" if windows else ""))
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} (service.log, redis/)")


def print_summary(r: dict) -> None:
    s, d = r["summary"], r["durability"]
    print(f"\nsoak {r['duration_s']} s, {r['concurrency']} clients, {r['write_share']:.0%} writes, "
          f"{s['requests']} requests ({s['rps_mean']} req/s)")  # fmt: skip
    print(f"errors outside the documented 503s: {s['n_errors']} {s['errors'] or ''} (goal 0)")
    print(f"documented 503s: {s['n_documented_503']} {s['documented_503'] or ''}")
    print(
        f"p50 median {s['p50_ms_median_of_windows']} ms; p99 median {s['p99_ms_median_of_windows']} ms, "
        f"worst window {s['p99_ms_max_of_windows']} ms"
    )
    for ev in r["events"]:
        extra = {k: v for k, v in ev.items() if k not in ("event", "t_s")}
        print(f"{ev['event']} at {ev['t_s']} s: {extra}")
    print(
        f"second half: service RSS {s['service_rss_mib_second_half']} MiB, slope "
        f"{s['service_rss_mib_per_hour_second_half']} MiB/h; Redis used_memory "
        f"{s['redis_used_memory_mib_second_half']} MiB, slope "
        f"{s['redis_used_memory_mib_per_hour_second_half']} MiB/h (~{s['redis_bytes_per_stored_write']} "
        "bytes per stored write, cache entries of newly seen users included)"
    )
    print(
        f"durability: {d['writes_acknowledged']} writes acknowledged, {d['writes_outcome_unknown']} unknown, "
        f"{d['stream_entries_at_end']} stream entries at the end: {d['acknowledged_writes_missing']} "
        "acknowledged writes missing (goal 0)"
    )
    lg = r["service_log"]
    print(f"service log: {lg['bytes'] / 2**20:.1f} MiB, {lg['lines']} lines, {lg['by_level']}")


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = r["windows"]
    t = np.array([x["t_s"] for x in w]) / 60
    fig, ax = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ax[0].plot(t, [x["p99_ms"] for x in w], label="p99", color="C3")
    ax[0].plot(t, [x["p50_ms"] for x in w], label="p50", color="C0")
    ax[0].set_ylabel(f"latency ms ({r['sample_s']}-s windows)")
    ax[0].set_yscale("log")
    rps = ax[0].twinx()
    rps.plot(t, [x["rps"] for x in w], color="0.6", lw=0.8, label="req/s")
    rps.set_ylabel("req/s", color="0.4")
    ax[0].legend(loc="upper left")
    ax[1].plot(t, [x["service_rss_mib"] for x in w], label="service RSS", color="C2")
    ax[1].plot(t, [x["service_pss_mib"] for x in w], label="service PSS", color="C2", ls=":")
    redis_mem = [np.nan if x["redis_used_memory_mib"] is None else x["redis_used_memory_mib"] for x in w]
    ax[1].plot(t, redis_mem, label="Redis used_memory", color="C1")
    ax[1].set_ylabel("MiB")
    ax[1].legend(loc="upper left")
    width = r["sample_s"] / 60 * 0.8
    bottom = np.zeros(len(w))
    kinds = sorted({k for x in w for k in x["answers"]["documented_503"]})
    for i, kind in enumerate(kinds):
        n = np.array([x["answers"]["documented_503"].get(kind, 0) for x in w])
        ax[2].bar(t, n, width=width, bottom=bottom, color=f"C{i + 1}", label=f"documented: {kind}")
        bottom += n
    err = np.array([x["answers"]["n_errors"] for x in w])
    ax[2].bar(t, err, width=width, bottom=bottom, color="k", label=f"errors ({int(err.sum())})")
    ax[2].set_ylabel("answers per window")
    ax[2].set_xlabel("minutes")
    ax[2].legend(loc="upper left", fontsize=8)
    for ev in r["events"]:
        start = ev["t_s"] / 60
        if ev["event"] == "redis restart":  # down from the SIGKILL until it answers again
            end = start + (ev["down_s"] + ev["aof_load_s"]) / 60
            label = f"Redis killed, {ev['down_s']:g} s down"
        else:  # promoted, then served once the poller has loaded (and warmed) it
            end = start + ev["serving_after_s"] / 60
            label = f"promoted, served after {ev['serving_after_s']:g} s"
        for a in ax:
            a.axvspan(start, end, color="0.85", zorder=0)
            a.axvline(start, color="k", ls="--", lw=0.8)
        ax[0].annotate(
            label,
            (start, 1),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
            xytext=(3, -3),
            textcoords="offset points",
        )
    s = r["summary"]
    fig.suptitle(
        f"soak: {r['duration_s']} s, {r['concurrency']} clients, {r['write_share']:.0%} writes, "
        f"{r['cpus']} CPUs; errors {s['n_errors']}, documented 503s {s['n_documented_503']}; "
        f"{r['dataset'] or ''} {r['version_a']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

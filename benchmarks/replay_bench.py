"""What the online loop is worth: replay a real dataset's temporal tail as live traffic (issue 15, point 5).

Protocol (one process, a real Redis, the real service over HTTP):

1. Positive interactions (rating > threshold), deduplicated (earliest), ordered by time. Day 0 is the first
   ``--day0-frac`` of each user's own time line (``--split per-user``, the default: the temporal split) or of
   all events (``--split global``: one time cut); the rest, in time order, is split into ``--windows``
   windows of equal size.
2. Day 0: prepared (k-core, temporal leave-last-out split), trained with ``edgerec train``'s recipe, exported,
   published and promoted: the **frozen** model.
3. The service (``service.main.create_app``, uvicorn) serves that store with the given Redis.
4. For each window w: score window w for every user the service holds interactions of before it (targets:
   the user's window-w items not seen before; history: what the service holds, i.e. day 0 as prepared, so
   the events its k-core filter dropped are in no model, plus the windows fed) with the frozen version, the
   **loop**'s current version (store CURRENT) and **EASE** refitted on those same interactions; then feed
   window w through ``POST /users/{id}/interactions`` (one request per user, with timestamps) and run
   ``edgerec retrain`` (``edgerec.retrain.retrain``: read the stream, snapshot, warm-start, gate,
   publish/promote).

Every model is scored the same way, in raw-id space: top-``--k`` among items it knows, the user's history
excluded; a model that does not know an item cannot rank it (that is the frozen model's decay). Users a
version does not know are served from their history (prompt without a user token), as the service does.

    OMP_NUM_THREADS=1 python benchmarks/replay_bench.py /work/shared/datasets/movielens-100k --windows 4

writes ``benchmarks/results/replay-<dataset>-<split>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

KEY = "replay-bench-key"
MODELS = ("frozen", "loop", "ease")


# ------------------------------------------------------------------------------------------------ data
def file_order_time(users) -> np.ndarray:
    """A time line for data without timestamps whose rows are in time order within each user (the
    amazon files of ../shared): each event's position in its user's history as a fraction of that history,
    in units of 1e6 s. Only each user's own order is real, so this serves the per-user split alone; events
    at the same relative position of different users fall in the same window."""
    count: dict[str, int] = defaultdict(int)
    rank = np.empty(len(users), dtype=np.float64)
    for n, user in enumerate(users):
        rank[n] = count[user]
        count[user] += 1
    size = np.asarray([count[user] for user in users], dtype=np.float64)
    return rank / size * 1e6


def positive_events(source: Path, threshold: float | None, split: str = "per-user"):
    """(users, items, ts) arrays of positive, deduplicated interactions in time order."""
    from training.data.ingest import read_source

    raw = read_source(source)
    if raw.timestamps is None and split != "per-user":
        raise SystemExit(f"{source} has no timestamps: a global time cut needs them (--split per-user)")
    u = np.asarray(raw.users, dtype=object)
    i = np.asarray(raw.items, dtype=object)
    if raw.timestamps is None:
        print(f"{source.name}: no timestamps; each user's file order is their time line", flush=True)
        ts = file_order_time(u)
    else:
        ts = np.asarray(raw.timestamps, dtype=np.float64)
    keep = np.ones(len(u), dtype=bool)
    if raw.ratings is not None and threshold is not None:
        keep &= np.asarray(raw.ratings) > threshold
    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(ts[rows], kind="stable")]
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows:
        pair = (u[r], i[r])
        if pair not in seen:
            seen.add(pair)
            out.append(r)
    rows = np.asarray(out)
    return u[rows].astype(str), i[rows].astype(str), ts[rows], raw


def day0_first(u, i, ts, frac: float, split: str):
    """Reorder the events so that day 0 comes first (time order), then the tail (time order); returns the
    arrays and day 0's size. ``global``: one time cut; ``per-user``: each user's first ``frac`` of their own
    time line (at least one event) is day 0, the issue's temporal split."""
    n = len(u)
    if split == "global":
        return u, i, ts, int(n * frac)
    rank = np.zeros(n, dtype=np.int64)
    count: dict[str, int] = defaultdict(int)
    for r in range(n):  # events are in time order
        rank[r] = count[u[r]]
        count[u[r]] += 1
    size = np.asarray([count[x] for x in u])
    day0 = rank < np.maximum(1, np.floor(frac * size))
    order = np.concatenate([np.flatnonzero(day0), np.flatnonzero(~day0)])
    return u[order], i[order], ts[order], int(day0.sum())


def windows_of(n_day0: int, n: int, w: int) -> list[tuple[int, int]]:
    bounds = np.linspace(n_day0, n, w + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ------------------------------------------------------------------------------------------------ scoring
def metrics_of(ranked: dict[str, list[str]], targets: dict[str, set[str]], k: int) -> dict:
    """Mean recall@k / NDCG@k over the target users, and each user's figures (in ``targets``' order, the
    same for every model of a window: the paired comparison of :func:`paired_gain` needs them)."""
    rec, ndcg = [], []
    for user, want in targets.items():
        got = ranked.get(user, [])[:k]
        hits = [1.0 if it in want else 0.0 for it in got]
        rec.append(sum(hits) / min(k, len(want)))
        dcg = sum(h / math.log2(n + 2) for n, h in enumerate(hits))
        ideal = sum(1.0 / math.log2(n + 2) for n in range(min(k, len(want))))
        ndcg.append(dcg / ideal)
    return {
        f"recall@{k}": float(np.mean(rec)),
        f"ndcg@{k}": float(np.mean(ndcg)),
        "users": len(targets),
        "per_user": {f"recall@{k}": [round(x, 5) for x in rec], f"ndcg@{k}": [round(x, 5) for x in ndcg]},
    }


def paired_gain(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """mean(a) / mean(b) - 1 over the same users, with a 95 % interval from resampling users (a paired
    bootstrap: both models are scored on each resampled user set). A window scores tens to hundreds of
    users, so a few-percent gap can be noise; the interval says which."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) != len(y) or not len(x) or y.sum() == 0:
        return {"gain": float("nan"), "lo": float("nan"), "hi": float("nan")}
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    boot = x[idx].sum(1) / np.maximum(y[idx].sum(1), 1e-12) - 1.0
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"gain": float(x.sum() / y.sum() - 1.0), "lo": float(lo), "hi": float(hi)}


def rank_version(folder: Path, histories: dict[str, list[str]], users: list[str], k: int) -> dict:
    """Top-k raw item ids per user from a version folder, through the inference core."""
    from inference.version import open_version

    v = open_version(folder)
    uidx = {u: n for n, u in enumerate(v.user_ids)}
    iidx = {it: n for n, it in enumerate(v.item_ids)}
    pop = np.argsort(-np.asarray(v.popularity), kind="stable")
    prompts, hists, excl, who, out = [], [], [], [], {}
    for user in users:
        h = np.asarray([iidx[i] for i in histories[user] if i in iidx], dtype=np.int64)
        ui = uidx.get(user)
        known = np.unique(np.concatenate([h, v.graph.user_items(ui)])) if ui is not None else np.unique(h)
        if ui is None and len(h) == 0:  # nothing the version knows: the popularity fallback
            out[user] = [v.item_ids[j] for j in pop[: k + len(known)] if j not in set(known)][:k]
            continue
        prompts.append(v.builder.predictive(ui, h, v.builder.neighbourhood(ui, h)))
        hists.append(h)
        excl.append(known)
        who.append(user)
    for start in range(0, len(who), 256):
        sl = slice(start, start + 256)
        ids, _ = v.rank(prompts[sl], hists[sl], excl[sl], k)
        for user, row in zip(who[sl], ids, strict=True):
            out[user] = [v.item_ids[j] for j in row if j >= 0]
    return out


def rank_ease(histories: dict[str, list[str]], users: list[str], k: int, lam: float) -> dict:
    from training.evaluation.baselines.ease import EASE

    items = sorted({i for h in histories.values() for i in h})
    iidx = {it: n for n, it in enumerate(items)}
    names = sorted(histories)
    rows = [n for n, u in enumerate(names) for _ in histories[u]]
    cols = [iidx[i] for u in names for i in histories[u]]
    x = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(names), len(items)))
    model = EASE(lam=lam).fit(x)
    uidx = {u: n for n, u in enumerate(names)}
    scores = model.score(np.asarray([uidx[u] for u in users]))
    out = {}
    for n, user in enumerate(users):
        s = scores[n]
        s[x[uidx[user]].indices] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        out[user] = [items[j] for j in top]
    return out


# ------------------------------------------------------------------------------------------------ day 0
def train_day0(args, u, i, ts, n0: int, raw, root: Path, store_root: Path) -> tuple[str, float]:
    from training.data.dataset import RawInteractions, prepare
    from training.export.exporter import export_run, publish
    from training.recipe.cli import apply_overrides
    from training.recipe.train import TrainConfig, train

    day0 = RawInteractions(
        users=list(u[:n0]), items=list(i[:n0]), timestamps=ts[:n0], item_text=raw.item_text, source="day0"
    )
    ds = prepare(
        day0, f"{args.source.name}-day0", rating_threshold=None, k_core=args.k_core, split="temporal"
    )
    ds.save(root / "data" / "day0")
    # edgerec train's default recipe; only what the command line names is overridden
    shape = {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head}
    shape |= {"word_vocab": args.word_vocab, "epochs": args.day0_epochs}
    fields = {key: value for key, value in shape.items() if value is not None}
    fields = apply_overrides(fields, args.day0_set)
    fields |= {"dataset": str(root / "data" / "day0"), "run_dir": str(root / "runs" / "day0")}
    cfg = TrainConfig.from_dict(fields)
    t0 = time.time()
    train(cfg, quiet=True)
    seconds = time.time() - t0
    folder = export_run(root / "runs" / "day0", root / "exports" / "day0")
    return publish(folder, store_root, promote=True), seconds


# ------------------------------------------------------------------------------------------------ feeding
def add_new_items(client, items, catalog: set[str], texts: dict[str, dict[str, str]]) -> int:
    """``PUT /items/{id}`` (text only) for the window's items that neither the served version nor the
    catalogue has yet: a shop lists a product before anyone buys it. Adds them to ``catalog``; returns how
    many were added."""
    from service.schemas import item_write_body

    added = 0
    for item in dict.fromkeys(items):
        if item in catalog:
            continue
        body = item_write_body(item, texts.get(item, {}))
        resp = client.put(f"/items/{item}", json=body, headers={"X-API-Key": KEY})
        if resp.status_code not in (200, 201):
            raise SystemExit(f"PUT /items/{item}: {resp.status_code} {resp.text[:300]}")
        catalog.add(item)
        added += 1
    return added


def feed(client, u, i, ts, catalog: set[str]) -> tuple[list[int], int]:
    """POST each user's window interactions; returns (the rows stored, how many were left out).

    The service refuses item ids neither its model nor its catalogue has (422), so with ``--no-catalogue``
    interactions with items outside the served version are left out (and counted)."""
    by_user: dict[str, list[int]] = defaultdict(list)
    skipped = 0
    for n in range(len(u)):
        if i[n] in catalog:
            by_user[u[n]].append(n)
        else:
            skipped += 1
    sent: list[int] = []
    for user, rows in by_user.items():
        for start in range(0, len(rows), 100):
            part = rows[start : start + 100]
            body = {"items": [i[r] for r in part], "timestamps": [float(ts[r]) for r in part]}
            resp = client.post(f"/users/{user}/interactions", json=body, headers={"X-API-Key": KEY})
            if resp.status_code not in (200, 201):
                raise SystemExit(f"POST /users/{user}/interactions: {resp.status_code} {resp.text[:300]}")
            sent += part
    return sorted(sent), skipped


def wait_for_swap(client, version: str, users: list[str], timeout_s: float = 60.0) -> dict:
    """Ask for recommendations while the service's store poller picks the promotion up: seconds until
    GET /model names ``version``, and how many requests failed meanwhile (the hot swap promises none)."""
    t0, requests, failed = time.time(), 0, 0
    while time.time() - t0 < timeout_s:
        for user in users:
            resp = client.post(f"/recommend/{user}", json={"k": 10}, headers={"X-API-Key": KEY})
            requests += 1
            failed += resp.status_code != 200
        if client.get("/model", headers={"X-API-Key": KEY}).json().get("version") == version:
            return {"seconds": round(time.time() - t0, 2), "requests": requests, "failed": failed}
        time.sleep(0.2)
    return {"seconds": None, "requests": requests, "failed": failed}


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "source",
        type=Path,
        help="a RecBole-format dataset folder: with timestamps, or (per-user split only) rows in time "
        "order within each user",
    )
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--day0-frac", type=float, default=0.6)
    p.add_argument(
        "--split",
        choices=("per-user", "global"),
        default="per-user",
        help="day 0 = each user's first part of their time line (per-user) or one global time cut",
    )
    p.add_argument("--threshold", type=float, default=3.0, help="keep ratings above this (positives)")
    p.add_argument("--k-core", type=int, default=3)
    p.add_argument("--k", type=int, default=20)
    # day 0 is `edgerec train`'s default recipe; these override it (a quicker, weaker day-0 model)
    p.add_argument("--n-layer", type=int, default=None)
    p.add_argument("--n-embd", type=int, default=None)
    p.add_argument("--n-head", type=int, default=None)
    p.add_argument("--word-vocab", type=int, default=None)
    p.add_argument("--day0-epochs", type=int, default=None)
    p.add_argument("--retrain-epochs", type=int, default=2)
    p.add_argument("--tag", default="", help="appended to the result files' names (e.g. the day-0 recipe)")
    p.add_argument(
        "--day0-set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a TrainConfig field for the day-0 model, as `edgerec train --set` takes it (e.g. "
        "prompt.history_order=time); the retrains keep the served version's recipe, so it holds for them too",
    )
    p.add_argument(
        "--retrain-set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a TrainConfig field for every retrain's fine-tune (edgerec retrain --set), e.g. lr=5e-5",
    )
    p.add_argument(
        "--catalogue",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add a window's items the service does not know through PUT /items (their text) before its "
        "interactions are fed; --no-catalogue leaves their interactions out",
    )
    p.add_argument("--ease-lambda", type=float, default=200.0)
    p.add_argument(
        "--redis-url", default=os.environ.get("EDGEREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here (default: temporary)")
    args = p.parse_args()
    if not 0 < args.day0_frac < 1 or args.windows < 1:
        raise SystemExit("--day0-frac must be in (0, 1) and --windows >= 1")
    overrides = {}
    for item in args.retrain_set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--retrain-set expects KEY=JSON, got {item!r}")
        overrides[key] = json.loads(value)

    import httpx
    import redis
    import torch
    from service_support import ServerThread

    from edgerec.retrain import retrain
    from model_store import ModelStore
    from service.config import Settings
    from service.main import create_app
    from training.data.dataset import PreparedDataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    root = args.keep or Path(tempfile.mkdtemp(prefix="replay-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    store_root = root / "models"
    prefix = f"replay-{uuid.uuid4().hex[:8]}"
    u, i, ts, raw = positive_events(args.source, args.threshold, args.split)
    u, i, ts, n0 = day0_first(u, i, ts, args.day0_frac, args.split)
    wins = windows_of(n0, len(u), args.windows)
    t_all = time.time()
    frozen, day0_seconds = train_day0(args, u, i, ts, n0, raw, root, store_root)
    store = ModelStore(store_root)
    print(f"day 0: {n0} interactions, trained in {day0_seconds:.0f}s, version {frozen}", flush=True)

    settings = Settings(
        home=root / "home",
        model_store=store_root,
        redis_url=args.redis_url,
        redis_prefix=prefix,
        stream_shards=args.shards,
        api_key=KEY,
        admin_api_key=KEY,  # PUT /items (the catalogue) is an admin write
        model_poll_s=1.0,
        access_log=False,
    )
    rows = []
    catalog: set[str] = set()  # items the service takes interactions with (versions' + catalogue's)
    # What the service knows of day 0 is the prepared dataset: the k-core filter drops some events, which no
    # model here ever sees (they are not in the stream either). EASE is refitted on the same interactions
    # the loop has (day 0 as prepared, then what was fed), and histories hold only those.
    day0 = PreparedDataset.load(root / "data" / "day0")  # as train_day0 saved it
    kept = (day0.train + day0.valid + day0.test).tocoo()
    known = {(day0.user_ids[r], day0.item_ids[c]) for r, c in zip(kept.row, kept.col, strict=True)}
    history: dict[str, list[str]] = defaultdict(list)
    for n in range(n0):
        if (u[n], i[n]) in known:
            history[u[n]].append(i[n])
    dropped = n0 - sum(len(h) for h in history.values())
    print(f"day 0 as prepared: {n0 - dropped} of {n0} interactions ({dropped} dropped by the k-core)")
    try:
        with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
            for w, (a, b) in enumerate(wins):
                targets: dict[str, set[str]] = defaultdict(set)
                for n in range(a, b):
                    if history.get(u[n]) and i[n] not in set(history[u[n]]):
                        targets[u[n]].add(i[n])
                users = sorted(targets)
                hist = {x: history[x] for x in users}
                current = store.current()
                row = {
                    "window": w,
                    "interactions": b - a,
                    "first_ts": float(ts[a]),
                    "last_ts": float(ts[b - 1]),
                }
                row["frozen"] = metrics_of(
                    rank_version(store.path(frozen), hist, users, args.k), targets, args.k
                )
                row["loop"] = metrics_of(
                    rank_version(store.path(current), hist, users, args.k), targets, args.k
                )
                row["loop_version"] = current
                row["ease"] = metrics_of(rank_ease(history, users, args.k, args.ease_lambda), targets, args.k)
                row["loop_vs"] = {
                    other: {
                        metric: paired_gain(row["loop"]["per_user"][metric], row[other]["per_user"][metric])
                        for metric in (f"recall@{args.k}", f"ndcg@{args.k}")
                    }
                    for other in ("ease", "frozen")
                }
                means = {
                    m: {x: y for x, y in row[m].items() if x != "per_user"}
                    for m in ("frozen", "loop", "ease")
                }
                print(json.dumps({"window": w, **means, "loop_vs": row["loop_vs"]}), flush=True)
                t0 = time.time()
                catalog |= set(json.loads((store.path(current) / "item_ids.json").read_text()))
                if args.catalogue:
                    row["new_items_added"] = add_new_items(client, i[a:b], catalog, raw.item_text)
                sent, row["left_out_unknown_item"] = feed(client, u[a:b], i[a:b], ts[a:b], catalog)
                row["fed"] = len(sent)
                row["feed_seconds"] = round(time.time() - t0, 1)
                for n in sent:
                    history[u[a + n]].append(i[a + n])
                if w == len(wins) - 1:
                    rows.append(row)
                    break  # the last window's retrain would have nothing left to be scored on
                t0 = time.time()
                result = retrain(
                    store_root=store_root,
                    redis_url=args.redis_url,
                    prefix=prefix,
                    shards=args.shards,
                    epochs=args.retrain_epochs,
                    train_overrides=overrides,
                    echo=lambda s: print(f"  retrain: {s}", flush=True),
                )
                row["retrain_seconds"] = round(time.time() - t0, 1)
                row["retrain"] = {"status": result.status, "version": result.version, "gate": result.gate}
                if result.status == "promoted":
                    row["swap"] = wait_for_swap(client, result.version, users[:20] or [u[a]])
                rows.append(row)
    finally:
        r = redis.Redis.from_url(args.redis_url)
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "command": "python benchmarks/replay_bench.py " + " ".join(sys.argv[1:]),
        "dataset": args.source.name,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "time_line": "timestamps" if raw.timestamps is not None else "file order within each user",
        "day0_interactions": n0,
        "day0_interactions_prepared": n0 - dropped,
        "day0_train_seconds": round(day0_seconds, 1),
        "total_seconds": round(time.time() - t_all, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "windows": rows,
    }
    write(report, args)


def write(report: dict, args) -> None:
    name = f"replay-{report['dataset']}-{args.split}" + (f"-{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
    k = args.k
    lines = [
        f"# Replay: {report['dataset']} "
        f"({len(report['windows'])} windows after a {args.day0_frac:.0%} {args.split} day 0)",
        "",
        f"`{report['command']}`",
        "",
    ]
    if report.get("time_line", "timestamps") != "timestamps":
        lines += [
            "The data has no timestamps: each user's time line is their rows' order in the file; windows cut "
            "every user's tail at the same fractions of their history (`file_order_time`).",
            "",
        ]
    lines += [
        f"| window | interactions | users scored | frozen R@{k} | loop R@{k} | EASE R@{k} | frozen N@{k} | "
        f"loop N@{k} | EASE N@{k} | fed (left out) | new items added | retrain s | gate | "
        "swap s (failed requests) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["windows"]:
        gate = (r.get("retrain") or {}).get("gate") or {}
        sw = r.get("swap")
        swap = f"{sw['seconds']} ({sw['failed']}/{sw['requests']})" if sw else "-"
        verdict = ("promoted" if gate.get("passed") else "kept") if gate else "-"
        lines.append(
            f"| {r['window']} | {r['interactions']} | {r['frozen']['users']} | "
            + " | ".join(f"{r[m][f'recall@{k}']:.4f}" for m in ("frozen", "loop", "ease"))
            + " | "
            + " | ".join(f"{r[m][f'ndcg@{k}']:.4f}" for m in ("frozen", "loop", "ease"))
            + f" | {r['fed']} ({r['left_out_unknown_item']}) | {r.get('new_items_added', '-')} | "
            + f"{r.get('retrain_seconds', '-')} | {verdict} | "
            + f"{swap} |"
        )
    if all("loop_vs" in r for r in report["windows"]):
        lines += [
            "",
            "The loop against EASE and against the frozen model on the same users: mean(loop) / mean(other) "
            "- 1, with a 95 % paired-bootstrap interval over users (2,000 resamples).",
            "",
            f"| window | users | loop vs EASE R@{k} | loop vs EASE N@{k} | loop vs frozen R@{k} | "
            f"loop vs frozen N@{k} |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["windows"]:
            cells = [
                "{gain:+.1%} [{lo:+.1%}, {hi:+.1%}]".format(**r["loop_vs"][other][metric])
                for other in ("ease", "frozen")
                for metric in (f"recall@{k}", f"ndcg@{k}")
            ]
            lines.append(f"| {r['window']} | {r['loop']['users']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Day-0 training {report['day0_train_seconds']} s; whole replay {report['total_seconds']} s; "
        f"{report['machine']}. Window w is scored before it is fed; the loop's model at window w has "
        "learned windows < w.",
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["window"] for r in report["windows"]]
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for j, metric in enumerate((f"recall@{k}", f"ndcg@{k}")):
            for m, label in (("frozen", "frozen day-0"), ("loop", "online loop"), ("ease", "EASE refitted")):
                ax[j].plot(xs, [r[m][metric] for r in report["windows"]], marker="o", label=label)
            ax[j].set_xlabel("window (scored before it is fed)")
            ax[j].set_ylabel(metric)
            ax[j].set_xticks(xs)
        ax[0].legend()
        fig.suptitle(f"Replay of {report['dataset']}'s temporal tail")
        fig.tight_layout()
        fig.savefig(args.out / f"{name}.png", dpi=110)
    except ImportError:
        print("matplotlib not installed: no PNG", file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""New items from their text alone (issue 16): how well items no model has seen are recommended.

1. **Hold out** 10 % of amazon-beauty's items (seeded) with every interaction they have; prepare the rest with
   the usual split (``--k-core 3``: the source is 5-core already, and re-filtering at 5 would drop exactly the
   users who chose held-out items).
2. **Train** the default recipe on it (``edgerec train``, no options) and export/promote the version.
3. **Add** the held-out items to a running service with ``PUT /items/{id}``, text only (title, brand,
   categories), and time how long until one shows up in ``POST /recommend``.
4. **Score**: for each user of the prepared data who chose held-out items, rank the held-out items by the
   model's text path (the user's served vector · the item's text vector, plus the history affinity the text
   model's export chose, ``inference.item_text``; the vector alone is a row of its own) and report
   recall@20/40 and NDCG@100 of the items they chose, against random, popularity among the new items (an
   oracle: it counts the held-out interactions themselves) and TF-IDF item-kNN from the user's history (word
   tf-idf cosine between each new item and the user's train items, summed). The same user vectors and side
   index the service uses; the bench checks the service's answers agree for a sample of users.
5. **Overall**: the version's test metrics (known items) with and without the new items in the search.

    python benchmarks/cold_items_bench.py --work /tmp/cold [--run-dir RUN] [--redis-url redis://...]

Writes ``benchmarks/results/cold_items-amazon-beauty.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.evaluation.metrics import hit_matrix, ndcg_at_k, recall_at_k  # noqa: E402

DATASET = (
    Path(os.environ.get("EDGEREC_SHARED_DATASETS", ROOT.parent / "shared" / "datasets")) / "amazon-beauty"
)
KS = (20, 40)
NDCG_K = 100
ADMIN_KEY = "cold-items-bench"


# ------------------------------------------------------------------------------------------- hold out
def hold_out(src: Path, out: Path, frac: float, seed: int) -> list[str]:
    """Write ``out/<name>.inter/.item`` without a seeded ``frac`` of the items; return the held-out ids."""
    name = src.name
    inter = (src / f"{name}.inter").read_text().splitlines()
    items = sorted({line.split("\t")[1] for line in inter[1:]})
    held = set(random.Random(seed).sample(items, int(len(items) * frac)))
    folder = out / f"{name}-cold"
    folder.mkdir(parents=True, exist_ok=True)
    kept = [inter[0]] + [line for line in inter[1:] if line.split("\t")[1] not in held]
    (folder / f"{name}-cold.inter").write_text("\n".join(kept) + "\n")
    meta = (src / f"{name}.item").read_text().splitlines()
    kept_meta = [meta[0]] + [line for line in meta[1:] if line.split("\t")[0] not in held]
    (folder / f"{name}-cold.item").write_text("\n".join(kept_meta) + "\n")
    return sorted(held)


def raw_rows(src: Path) -> tuple[list[tuple[str, str]], dict[str, dict[str, str]]]:
    """(user, item) rows of the source and its item text fields by item id."""
    name = src.name
    inter = [line.split("\t")[:2] for line in (src / f"{name}.inter").read_text().splitlines()[1:] if line]
    lines = (src / f"{name}.item").read_text().splitlines()
    cols = [c.split(":")[0] for c in lines[0].split("\t")]
    meta = {}
    for line in lines[1:]:
        row = dict(zip(cols, line.split("\t"), strict=False))
        meta[row["item_id"]] = {f: row.get(f, "") for f in ("title", "brand", "categories", "description")}
    return [(u, i) for u, i in inter], meta


def run(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as f:
        subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.time() - t0


# ------------------------------------------------------------------------------------------- baselines
def tfidf_rows(texts: list[str]) -> sp.csr_matrix:
    """Word tf-idf (lower-cased \\w+ tokens, smooth idf), rows L2-normalised."""
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, t in enumerate(texts):
        for w in re.findall(r"\w+", t.lower()):
            rows.append(r)
            cols.append(vocab.setdefault(w, len(vocab)))
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), len(vocab)))
    m.sum_duplicates()
    df = np.bincount(m.indices, minlength=len(vocab))
    m = m.multiply(np.log((1 + len(texts)) / (1 + df)) + 1).tocsr()
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    return sp.diags(1 / np.maximum(norms, 1e-12)) @ m


def metrics(scores: np.ndarray, truth: sp.csr_matrix) -> dict[str, float]:
    """recall@KS and NDCG@100 of dense scores [users, items] against ``truth`` (ties: smaller index first)."""
    k = min(NDCG_K, scores.shape[1])
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    hits = hit_matrix(order, truth)
    n = np.asarray(truth.sum(1)).ravel()
    out = {f"recall@{c}": float(recall_at_k(hits, n, c).mean()) for c in KS}
    out[f"ndcg@{NDCG_K}"] = float(ndcg_at_k(hits, n, k).mean())
    return out


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work folder (data, run, store, logs)")
    ap.add_argument("--source", type=Path, default=DATASET)
    ap.add_argument("--run-dir", type=Path, help="a finished run on the held-out data (skips training)")
    ap.add_argument("--frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--check-users", type=int, default=50, help="users whose HTTP answers are compared")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument(
        "--retrain",
        action="store_true",
        help="then write the held-out interactions through POST /users/{id}/interactions (one window) and "
        "time `edgerec retrain` on it against the full train (issue 15's cost)",
    )
    args = ap.parse_args()
    if not args.source.is_dir():
        sys.exit(f"error: dataset folder {args.source} not found (set EDGEREC_SHARED_DATASETS)")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "EDGEREC_HOME": str(work / "home"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    log = work / "bench.log"
    edgerec = [sys.executable, "-m", "edgerec.cli"]
    result: dict = {
        "source": str(args.source),
        "frac": args.frac,
        "seed": args.seed,
        "load_avg_start": os.getloadavg(),
    }

    held = hold_out(args.source, work / "data", args.frac, args.seed)
    raw = work / "data" / f"{args.source.name}-cold"
    prepared = work / "prepared"
    if not (prepared / "meta.json").exists():
        run([*edgerec, "data", "prepare", str(raw), "--out", str(prepared), "--k-core", "3"], env, log)
    run_dir = args.run_dir or work / "run"
    if not (run_dir / "metrics.json").exists():
        result["train_seconds"] = round(
            run([*edgerec, "train", str(prepared), "--run-dir", str(run_dir), "--quiet"], env, log), 1
        )
    store = work / "store"
    from model_store import ModelStore

    if not list(store.rglob("export.json")):
        result["export_seconds"] = round(
            run([*edgerec, "export", str(run_dir), "--store", str(store), "--promote"], env, log), 1
        )
    handle = ModelStore(store).open_version(ModelStore(store).resolve("current"), verify=True)
    version_dir = handle.path
    result["text_model"] = json.loads((version_dir / "export.json").read_text()).get("text_model")
    result["run_metrics"] = json.loads((run_dir / "metrics.json").read_text()).get("test")

    score_offline(result, version_dir, prepared, args, held)
    check_service(result, store, args, held, work, env)
    result["load_avg_end"] = os.getloadavg()
    write(result, args.out)


def score_offline(result: dict, version_dir: Path, prepared: Path, args, held: list[str]) -> None:
    from inference.item_text import item_text
    from inference.side_index import SideIndex
    from inference.version import open_version
    from training.data.dataset import PreparedDataset

    ds = PreparedDataset.load(prepared)
    v = open_version(version_dir)
    rows, meta = raw_rows(args.source)
    u_index = {u: n for n, u in enumerate(v.user_ids)}
    h_index = {it: n for n, it in enumerate(held)}
    pairs = sorted({(u_index[u], h_index[i]) for u, i in rows if i in h_index and u in u_index})
    users = np.unique([p[0] for p in pairs])
    pos = {u: n for n, u in enumerate(users)}
    truth = sp.csr_matrix(
        (np.ones(len(pairs)), ([pos[u] for u, _ in pairs], [j for _, j in pairs])),
        shape=(len(users), len(held)),
    )
    result["new_items"] = len(held)
    result["eval_users"] = int(len(users))
    result["eval_pairs"] = len(pairs)

    # the served user vectors: the prompt the service builds for a known user with no live history
    t0 = time.perf_counter()
    hist = [v.graph.user_items(int(u)) for u in users]
    prompts = [
        v.builder.predictive(int(u), h, v.builder.neighbourhood(int(u), h))
        for u, h in zip(users, hist, strict=True)
    ]
    vecs, _ = v.encode(prompts, hist)
    result["encode_seconds"] = round(time.perf_counter() - t0, 1)
    texts = [item_text(meta.get(i, {})) for i in held]
    t0 = time.perf_counter()
    tv = v.text.vectors(texts)
    result["text_vector_ms_per_item"] = round(1000 * (time.perf_counter() - t0) / len(held), 3)

    rng = np.random.default_rng(args.seed)
    pop = np.bincount([h_index[i] for _, i in rows if i in h_index], minlength=len(held)).astype(np.float64)
    own = truth.toarray()
    tfidf = tfidf_rows([item_text(meta.get(i, {})) for i in v.item_ids] + texts)
    known_t, new_t = tfidf[: v.n_items], tfidf[v.n_items :]
    hist_m = sp.csr_matrix(
        (
            np.ones(sum(len(h) for h in hist)),
            (np.repeat(np.arange(len(users)), [len(h) for h in hist]), np.concatenate(hist)),
        ),
        shape=(len(users), v.n_items),
    )
    sim = np.asarray(((hist_m @ known_t) @ new_t.T).todense())
    rows_out = {
        "random": metrics(rng.random((len(users), len(held))), truth),
        "popularity among new items (oracle counts)": metrics(np.broadcast_to(pop, own.shape) - own, truth),
        "TF-IDF item-kNN from history": metrics(sim, truth),
        "edgerec text path, vector only (user vector · text vector)": metrics(vecs @ tv.vectors.T, truth),
    }
    # the served score: the vector plus the history affinity (its weight chosen at export; 0: vector alone)
    affinity = v.text.affinity(vecs, hist, tv.bags)
    served = vecs @ tv.vectors.T + (affinity if affinity is not None else 0.0)
    if affinity is not None:
        rows_out["edgerec text path (as served: + history affinity)"] = metrics(served, truth)
    result["new_item_table"] = rows_out

    # overall test metrics of known items, with and without the new items in the search
    test = ds.test
    known = (ds.train + ds.valid).tocsr()
    t_users = np.flatnonzero(np.asarray(test.sum(1)).ravel() > 0)
    side = SideIndex(v.n_items + np.arange(len(held)), tv.vectors, tv.bags)
    before, after = [], []
    for start in range(0, len(t_users), 512):
        b = t_users[start : start + 512]
        h = [v.graph.user_items(int(u)) for u in b]
        p = [
            v.builder.predictive(int(u), x, v.builder.neighbourhood(int(u), x))
            for u, x in zip(b, h, strict=True)
        ]
        bv, boosts = v.encode(p, h)
        excl = [known.indices[known.indptr[u] : known.indptr[u + 1]] for u in b]
        ids, sc = v.search(bv, NDCG_K, excl, boosts)
        before.append(ids)
        after.append(side.merge(bv, ids, sc, None, v.text.affinity(bv, h, tv.bags))[0])
    t = test[t_users]
    wide = sp.hstack([t, sp.csr_matrix((len(t_users), len(held)))]).tocsr()
    n = np.asarray(t.sum(1)).ravel()
    overall = {}
    for name, ids in (("without new items", np.vstack(before)), ("with new items", np.vstack(after))):
        hits = hit_matrix(np.where(ids < 0, 0, ids), wide) * (ids >= 0)
        overall[name] = {f"recall@{c}": float(recall_at_k(hits, n, c).mean()) for c in KS}
        overall[name][f"ndcg@{NDCG_K}"] = float(ndcg_at_k(hits, n, NDCG_K).mean())
    new_share = float((np.vstack(after)[:, :20] >= v.n_items).mean())
    overall["share of new items in the top 20"] = round(new_share, 4)
    result["overall_test"] = overall
    # the probe of "recommendable at once": the test user and new item where a new item ranks highest in
    # the merged search, so its answer shows the item as soon as the service has it
    merged = np.vstack(after)
    rows, cols = np.nonzero(merged >= v.n_items)
    probe = None  # no new item in any top 100: nothing to time
    if len(rows):
        k = np.lexsort((rows, cols))[0]
        row, col = int(rows[k]), int(cols[k])
        probe = (v.user_ids[int(t_users[row])], held[int(merged[row, col]) - v.n_items], col + 1)
    result["_check"] = {"users": users, "served": served, "v": v, "held": held, "probe": probe}


def check_service(result: dict, store: Path, args, held: list[str], work: Path, env: dict) -> None:
    """PUT every held-out item through a real service; compare sample answers with the offline path."""
    import httpx

    from service.schemas import item_write_body

    chk = result.pop("_check")
    _, meta = raw_rows(args.source)
    port = 18000 + os.getpid() % 1000
    prefix = f"coldbench{os.getpid()}"
    senv = env | {
        "EDGEREC_MODEL_STORE": str(store), "EDGEREC_REDIS_URL": args.redis_url,
        "EDGEREC_REDIS_PREFIX": prefix, "EDGEREC_ADMIN_API_KEY": ADMIN_KEY, "EDGEREC_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory", "--port", str(port)]
    with open(work / "service.log", "ab") as service_log:
        proc = subprocess.Popen(cmd, env=senv, cwd=ROOT, stdout=service_log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30, headers={"X-API-Key": ADMIN_KEY}) as c:
            for _ in range(600):
                try:
                    if c.get("/readyz").json().get("ready"):
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            lat = []
            probe_user, probe_item, probe_rank = chk["probe"] or (None, None, None)
            order = [probe_item] + [it for it in held if it != probe_item] if probe_item else held
            for n, it in enumerate(order):
                body = item_write_body(it, meta.get(it, {}))
                t0 = time.perf_counter()
                r = c.put(f"/items/{it}", json=body)
                r.raise_for_status()
                lat.append(time.perf_counter() - t0)
                if n == 0 and probe_item:  # PUT until it is in the probe user's answer (None: not in 5 s)
                    t_put, seen = time.perf_counter(), False
                    while not seen and time.perf_counter() - t_put < 5:
                        ans = c.post(f"/recommend/{probe_user}", json={"k": 100}).json()
                        seen = any(x["id"] == probe_item for x in ans["items"])
                    took = time.perf_counter() - t_put + lat[0]
                    result["seconds_to_recommendable"] = round(took, 3) if seen else None
                    result["probe"] = {"user": probe_user, "item": probe_item, "offline_rank": probe_rank}
            result["put_ms"] = {
                "p50": round(1000 * float(np.median(lat)), 2),
                "p99": round(1000 * float(np.percentile(lat, 99)), 2),
            }
            agree = []
            held_set = set(held)
            for r_ in chk["users"][: args.check_users]:
                uid = chk["v"].user_ids[int(r_)]
                got = [
                    x["id"]
                    for x in c.post(f"/recommend/{uid}", json={"k": 1000}).json()["items"]
                    if x["id"] in held_set
                ]
                row = int(np.flatnonzero(chk["users"] == r_)[0])
                order = np.argsort(-chk["served"][row], kind="stable")
                want = [held[j] for j in order[: len(got)]]
                agree.append(got[:5] == want[:5])
            result["service_agrees_top5_new_items"] = f"{sum(agree)}/{len(agree)}"
            if args.retrain:
                post_window(c, chk, args, held, result)
        if args.retrain:
            proc.terminate()
            proc.wait(30)
            retrain(result, store, args, prefix, work, env)
    finally:
        proc.terminate()
        proc.wait(30)
        import redis

        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)


def post_window(c, chk, args, held: list[str], result: dict) -> None:
    """Each evaluated user's held-out items as one interaction write (the window the retrain learns)."""
    rows, _ = raw_rows(args.source)
    held_set = set(held)
    per_user: dict[str, list[str]] = {}
    for u, i in rows:
        if i in held_set:
            per_user.setdefault(u, []).append(i)
    known = set(chk["v"].user_ids)
    n = 0
    for u, items in sorted(per_user.items()):
        if u in known:
            c.post(f"/users/{u}/interactions", json={"items": items}).raise_for_status()
            n += len(items)
    result["window_interactions"] = n


def retrain(result: dict, store: Path, args, prefix: str, work: Path, env: dict) -> None:
    from service.metrics import RETRAIN_STATUS_FILE

    cmd = [
        sys.executable,
        "-m",
        "edgerec.cli",
        "retrain",
        "--store",
        str(store),
        "--redis-url",
        args.redis_url,
    ]
    cmd += ["--prefix", prefix, "--dataset", str(work / "prepared")]
    seconds = run(cmd, env, work / "retrain.log")
    status = json.loads((store / RETRAIN_STATUS_FILE).read_text())
    run_dir = args.run_dir or work / "run"
    full = json.loads((run_dir / "metrics.json").read_text()).get("train_seconds")
    result["retrain"] = {"seconds": round(seconds, 1), "full_train_seconds": full, "status": status}


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = "cold_items-amazon-beauty"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = [
        "# New items from their text (amazon-beauty, 10 % of items held out)",
        "",
        f"`python benchmarks/cold_items_bench.py --work WORK` · {result['new_items']} new items, "
        f"{result['eval_users']} users who chose them ({result['eval_pairs']} pairs), ranked among the new "
        "items.",
        "",
        "| method | R@20 | R@40 | N@100 |",
        "|---|---|---|---|",
    ]
    for m, r in result["new_item_table"].items():
        lines.append(f"| {m} | {r['recall@20']:.4f} | {r['recall@40']:.4f} | {r['ndcg@100']:.4f} |")
    lines += [
        "",
        "Known items' test metrics (the version's test split), searched with and without the new items:",
        "",
    ]
    lines += ["| search | R@20 | R@40 | N@100 |", "|---|---|---|---|"]
    for m in ("without new items", "with new items"):
        r = result["overall_test"][m]
        lines.append(f"| {m} | {r['recall@20']:.4f} | {r['recall@40']:.4f} | {r['ndcg@100']:.4f} |")
    lines += [
        "",
        f"Share of new items in the top 20: {result['overall_test']['share of new items in the top 20']}. "
        f"Text model (chosen on validation at export): {json.dumps(result.get('text_model'))}.",
        f"Service: PUT /items p50 {result.get('put_ms', {}).get('p50')} ms; the probe's new item in its "
        f"user's top 100 after {result.get('seconds_to_recommendable')} s (from the PUT; probe "
        f"{json.dumps(result.get('probe'))}); HTTP top-5 new items equal the offline path for "
        f"{result.get('service_agrees_top5_new_items')} users. "
        f"Load average {result['load_avg_start']} → {result['load_avg_end']}.",
    ]
    if "retrain" in result:
        r = result["retrain"]
        lines.append(
            f"Retrain on the window ({result['window_interactions']} interactions, the held-out items): "
            f"{r['seconds']} s wall vs the full train's {r['full_train_seconds']} s of epochs; status "
            f"{json.dumps(r['status'])}."
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

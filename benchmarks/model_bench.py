"""Quality of the graph-attentive GPT-2 against the baselines, with ablations, on one dataset and split.

Every (variant, seed) is one ``edgerec train`` run in its own process (its own peak memory), in a run folder
under ``--runs-root``; a finished run (``metrics.json``) is reused and an unfinished one resumed, so the
bench can
be stopped and continued. Results go to ``benchmarks/results/model-<dataset>.{json,md,png}`` next to the
baselines' ``baselines-<dataset>.json`` (same preparation code, so the same split: the fingerprint is
checked).

    python benchmarks/model_bench.py .edgerec/data/amazon-office --seeds 0 1 \\
        --variants full hop_bias ones_bias no_neighbourhood pretrain

Variants (TrainConfig overrides on top of the defaults and ``--set``):
  full              the default recipe, exactly what `edgerec train DATASET` does (the file's
                    "default_variant"): fine-tuning on predictive prompts with co-users and two-hop items,
                    candidate prior, item-item term; no pre-training and (since 2026-12-07) no graph bias
  pretrain          the paper's pre-training first (content + collaborative + group + neighbour prompts)
  no_bias           graph bias off (all zero) everywhere: the default since 2026-12-07
  hop_bias          the paper's hop-distance graph bias in attention (the default until 2026-12-07)
  ones_bias         every id–id pair gets 1: token-type pattern only, no graph distances
  no_neighbourhood  no co-users / two-hop items in predictive prompts, no neighbour or group prompts
  no_pretrain       fine-tuning only (SVD-initialised id tables): the same as full under today's default
  no_user_token     prompts without user_<u> tokens (the anonymous form everywhere)
  weak_reg          mutual regulariser weight 0.01 instead of 1 (it pulls the SVD-initialised collaborative
                    tables toward content tables that drift far during word-LM epochs)
  variants12        12 held-out splits per user instead of 4 (more augmentation, more BFS at the start)
  held_out_targets  fine-tuning loss on the held-out items only (the paper's form) instead of every train item
  no_neighbourhood_no_bias   both of the above ablations at once (= no_neighbourhood today)
  soup              checkpoint soup of up to 4 best epochs, kept where validation prefers it
                    (training/recipe/soup.py; metrics.json "soup" records the tries)
  no_bias_soup      no_bias and soup at once (= soup today)

A variant that gives the same recipe as one listed before it (no_bias, no_pretrain and the two above, under
today's default) is said once and not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@20", "recall@40", "ndcg@100")
VARIANTS: dict[str, dict] = {
    "full": {},
    "no_bias": {"bias": {"enabled": False}},
    "hop_bias": {"bias": {"enabled": True}},
    "ones_bias": {"bias": {"enabled": True, "mode": "ones"}},
    "no_neighbourhood": {
        "prompt": {"n_co_users": 0, "n_two_hop_items": 0},
        "neighbour_prompts": False,
        "group_prompts": False,
    },
    "no_pretrain": {"pretrain_rounds": 0, "content_warmup": 0},
    "pretrain": {"pretrain_rounds": 2, "content_warmup": 1},
    "no_user_token": {"prompt": {"use_user_token": False}},
    # the history in time order (oldest first) instead of shuffled; + time cuts: half the held-out splits
    # predict the user's newest events from the ones before them (training/recipe/finetune.py)
    "time_order": {"prompt": {"history_order": "time"}},
    "next_items": {"prompt": {"history_order": "time"}, "next_targets": 0.5},
    # + the next-item loss at every history position (SASRec's objective on the same attention)
    "sequential": {"prompt": {"history_order": "time"}, "next_targets": 0.5, "seq_loss": 1.0},
    # the ranker's transitions (what followed the user's newest items), weight chosen on validation
    "transitions": {"transitions": True},
    "weak_reg": {"reg_lambda": 0.01},
    "variants12": {"target_variants": 12},
    "held_out_targets": {"all_train_targets": False},
}
VARIANTS["no_neighbourhood_no_bias"] = {**VARIANTS["no_neighbourhood"], "bias": {"enabled": False}}
VARIANTS["soup"] = {"soup_size": 4}
VARIANTS["no_bias_soup"] = {**VARIANTS["no_bias"], **VARIANTS["soup"]}


# TrainConfig fields added later, with the value at which the recipe is what it was before them: at that
# value they leave the hash (and so the committed results' "full") unchanged.
ADDED_OFF = {
    "soup_size": 0,
    "next_targets": 0.0,
    "seq_loss": 0.0,
    "prompt.history_order": "shuffled",
    "transitions": False,
}
# knobs of an added part that mean nothing while it is off: dropped at today's default value
ADDED_SETTINGS = ("transition_grid", "transition_keep")


def _default_recipe() -> str:
    """A short hash of TrainConfig's defaults: what "full" meant when the file was written."""
    from training.recipe.train import TrainConfig

    return recipe_hash(TrainConfig(dataset=""))


def recipe_hash(cfg) -> str:
    """A short hash of a TrainConfig's recipe fields (not the dataset, run folder or seed)."""
    import hashlib

    fields = cfg.to_dict()
    for key in ("dataset", "run_dir", "seed"):
        fields.pop(key, None)
    # knobs added after results were recorded, at the value that leaves the recipe as it was
    defaults = type(cfg)(dataset="").to_dict()
    for key in ADDED_SETTINGS:
        if fields.get(key) == defaults[key]:
            fields.pop(key)
    for key, off in ADDED_OFF.items():
        *parents, leaf = key.split(".")  # "prompt.history_order": a field of the prompt section
        section = fields
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and section.get(leaf) == off:
            section.pop(leaf)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def rebase(doc: dict, variant: str, old_default: dict, old_full_as: str) -> dict:
    """A results file made under an earlier default recipe, re-expressed against today's when one of its
    variants *is* today's default: that variant's runs become ``full``; the old ``full`` becomes
    ``old_full_as`` with ``old_default`` as its overrides (what turns today's default into the old one); every
    other variant W becomes ``old_full_as+W`` with the overrides that give its runs' config today. No run's
    figures change. Both claims are checked by recipe hash, so a wrong ``old_default`` or ``variant`` is
    refused (ValueError)."""
    from training.recipe.train import TrainConfig

    today = TrainConfig(dataset="").to_dict()

    def hash_of(overrides: dict) -> str:
        return recipe_hash(TrainConfig.from_dict(_merge(today, overrides)))

    now = _default_recipe()
    if doc.get("default_recipe") == now:
        raise ValueError("the file is already of today's default recipe: nothing to rebase")
    if doc.get("common_overrides"):
        raise ValueError("a file with common overrides (--set) cannot be rebased")
    if variant not in doc["variants"] or old_full_as in doc["variants"]:
        raise ValueError(f"need variant {variant!r} in the file and no variant named {old_full_as!r}")
    if hash_of(old_default) != doc["default_recipe"]:
        raise ValueError(
            f"today's default with {old_default} is not the file's default recipe ({doc['default_recipe']})"
        )
    if hash_of(_merge(old_default, doc["variants"][variant]["overrides"])) != now:
        raise ValueError(f"{variant!r} on the file's default is not today's default recipe")
    variants = {}
    for name, v in doc["variants"].items():
        if name == variant:
            variants["full"] = {**v, "overrides": {}}
        elif name == "full":
            variants[old_full_as] = {**v, "overrides": old_default}
        else:
            variants[f"{old_full_as}+{name}"] = {**v, "overrides": _merge(old_default, v["overrides"])}
    variants = {"full": variants.pop("full"), **variants}
    record = {"from_recipe": doc["default_recipe"], "variant": variant, "old_full_as": old_full_as}
    return {**doc, "default_recipe": now, "variants": variants, "rebased": [*doc.get("rebased", []), record]}


def distinct_recipes(names: list[str], overrides: dict[str, dict]) -> list[str]:
    """``names`` without those whose overrides give the same recipe as an earlier name (today ``no_bias`` is
    ``full``, ``no_neighbourhood_no_bias`` is ``no_neighbourhood``): each is said once on stderr and not
    trained twice. The config is built as ``edgerec train --set KEY=JSON`` builds it (a section given
    replaces the section)."""
    from training.recipe.train import TrainConfig

    seen: dict[str, str] = {}
    kept = []
    for name in names:
        h = recipe_hash(TrainConfig.from_dict({"dataset": "", **overrides[name]}))
        if h in seen:
            print(
                f"{name}: the same recipe as {seen[h]} under today's default; not run again", file=sys.stderr
            )
            continue
        seen[h] = name
        kept.append(name)
    return kept


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_one(dataset: str, run_dir: Path, overrides: dict, threads: int, log_dir: Path) -> dict:
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    cmd = [sys.executable, "-m", "edgerec.cli", "train", dataset, "--run-dir", str(run_dir), "--quiet"]
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    if (run_dir / "train_config.json").exists():
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{run_dir.parent.name}-{run_dir.name}.log"
    print(f"[{datetime.now(UTC):%H:%M:%S}] {' '.join(cmd)}  (log: {log})", flush=True)
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}); see {log}")
    return json.loads(metrics_path.read_text())


def _baselines(name: str, fingerprint: str) -> list[dict]:
    path = ROOT / "benchmarks" / "results" / f"baselines-{name}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data.get("dataset", {}).get("fingerprint") != fingerprint:
        print(f"warning: {path} was computed on another split; baselines left out", file=sys.stderr)
        return []
    return [{"model": r["model"], "test": r["test"], "valid": r["valid"]} for r in data.get("rows", [])]


def summarise(runs: list[dict]) -> dict:
    out = {}
    for split in ("valid", "test"):
        vals = {k: [r[split][k] for r in runs] for k in METRICS}
        out[split] = {k: float(np.mean(v)) for k, v in vals.items()}
        out[split + "_std"] = {k: float(np.std(v)) for k, v in vals.items()}
    for k in ("train_seconds", "finetune_tokens_per_s", "peak_rss_mb", "best_epoch"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    priors = [r["prior"] for r in runs if r.get("prior")]
    if priors and len(priors) == len(runs):
        out["prior_betas"] = [p["beta"] for p in priors]
        if all("test_without" in p for p in priors):  # runs from before "ablations": prior off on test
            vals = {k: [p["test_without"][k] for p in priors] for k in METRICS}
            out["test_without_prior"] = {k: float(np.mean(v)) for k, v in vals.items()}
            out["test_without_prior_std"] = {k: float(np.std(v)) for k, v in vals.items()}
    terms = [r["item_item"] for r in runs if r.get("item_item")]
    if terms and len(terms) == len(runs):  # the ranker's item-item term as each run chose it
        out["item_item"] = [{k: t.get(k) for k in ("lam", "keep", "weight")} for t in terms]
    # the ranker's parts, each off with the other re-chosen on validation (train.test's "ablations")
    trans = [r.get("transitions") for r in runs]
    if all(trans):  # the ranker's transitions (opt-in) as each run chose their weight
        out["transition_weights"] = [t["next_weight"] for t in trans]
    for name in ("no_transitions", "no_item_item", "no_prior", "transformer_only"):
        found = [r["ablations"][name] for r in runs if name in (r.get("ablations") or {})]
        if found and len(found) == len(runs):
            vals = {k: [a["test"][k] for a in found] for k in METRICS}
            out["ablation_" + name] = {k: float(np.mean(v)) for k, v in vals.items()}
            out["ablation_" + name + "_std"] = {k: float(np.std(v)) for k, v in vals.items()}
    return out


def write_markdown(result: dict, path: Path) -> None:
    ds = result["dataset"]
    lines = [
        f"# Model vs baselines: {ds['name']} ({ds['users']} users, {ds['items']} items, split "
        f"{ds['fingerprint'][:12]})",
        "",
        f"Command: `{result['command']}`  ",
        *(
            [
                f"Rows of {', '.join(result['kept_from_earlier'])} come from earlier invocations (kept in "
                'the JSON; docs/benchmarks.md, "Model", lists their commands).  '
            ]
            if result.get("kept_from_earlier")
            else []
        ),
        *(
            f"The default recipe became what `{r['variant']}` was (recipe {r['from_recipe']} before): its "
            f"runs are `full`, the old default's `{r['old_full_as']}` (`--rebase`; no figure changed).  "
            for r in result.get("rebased", [])
        ),
        f"Seeds: {result['seeds']}; test metrics are means over seeds (± std); checkpoints chosen on "
        "validation R@20 + R@40 + N@100.",
        "",
        "| model | test R@20 | test R@40 | test N@100 | valid R@20 | best ep. | train s | tok/s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        s = v["summary"]
        t, sd = s["test"], s["test_std"]
        cells = [f"{t[k]:.4f} ± {sd[k]:.4f}" for k in METRICS]
        seeds = ",".join(str(r["seed"]) for r in v["runs"])
        lines.append(
            f"| GraphGPT {name} (seeds {seeds}) | {' | '.join(cells)} | {s['valid']['recall@20']:.4f} | "
            f"{s['best_epoch']:.1f} | {s['train_seconds']:.0f} | {s['finetune_tokens_per_s'] or 0:.0f} | "
            f"{s['peak_rss_mb']:.0f} |"
        )
        parts = [
            ("ablation_no_transitions", "↳ same runs, no transitions (the rest as chosen)"),
            ("ablation_no_item_item", "↳ same runs, no item-item term (prior re-chosen on validation)"),
            ("ablation_no_prior", "↳ same runs, no candidate prior (term re-chosen on validation)"),
            ("ablation_transformer_only", "↳ same runs, transformer alone (no prior, no term)"),
        ]
        if "ablation_transformer_only" not in s and "test_without_prior" in s:
            betas = ", ".join(f"{b:g}" for b in s["prior_betas"])
            parts = [("test_without_prior", f"↳ same runs, prior off (fitted weights {betas})")]
        for key, label in parts:
            if key in s:
                t, sd = s[key], s[key + "_std"]
                cells = [f"{t[k]:.4f} ± {sd[k]:.4f}" for k in METRICS]
                lines.append(f"| {label} | {' | '.join(cells)} | | | | | |")
    chosen = []
    for name, v in result["variants"].items():
        s = v["summary"]
        if "item_item" in s or "prior_betas" in s:
            betas = ", ".join(f"{b:g}" for b in s.get("prior_betas", []))
            terms = "; ".join(
                f"λ {t['lam']:g}, keep {t['keep']}, w {t['weight']:g}" for t in s.get("item_item", [])
            )
            nexts = ", ".join(f"{w:g}" for w in s.get("transition_weights", []))
            chosen.append(
                f"- {name}, chosen on validation per seed: prior β [{betas}]; item-item term [{terms}]"
                + (f"; transitions w [{nexts}]" if nexts else "")
            )
    for b in result["baselines"]:
        t = b["test"]
        lines.append(
            f"| {b['model']} | {' | '.join(f'{t[k]:.4f}' for k in METRICS)} | {b['valid']['recall@20']:.4f} "
            "| | | | |"
        )
    lines += ["", *chosen, ""] if chosen else [""]
    path.write_text("\n".join(lines))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, r20, n100, err = [], [], [], []
    for name, v in result["variants"].items():
        names.append(f"GraphGPT\n{name}")
        r20.append(v["summary"]["test"]["recall@20"])
        n100.append(v["summary"]["test"]["ndcg@100"])
        err.append(v["summary"]["test_std"]["recall@20"])
    for b in result["baselines"]:
        names.append(b["model"])
        r20.append(b["test"]["recall@20"])
        n100.append(b["test"]["ndcg@100"])
        err.append(0.0)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(7, len(names) * 0.9), 4))
    ax.bar(x - 0.2, r20, 0.4, yerr=err, label="test Recall@20")
    ax.bar(x + 0.2, n100, 0.4, label="test NDCG@100")
    ax.set_xticks(x, [n.replace("_", " ") for n in names], fontsize=7, rotation=30, ha="right")
    ax.set_title(
        f"{result['dataset']['name']}: model variants vs baselines (mean over seeds {result['seeds']})"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(
    size: str, n_words: int, n_users: int, n_items: int, batch: int, length: int, steps: int
) -> dict:
    """Synthetic training-step and encoding throughput (tokens/s) of one model size, one thread."""
    import torch

    from inference.torch_model import GraphGPT, ModelConfig

    torch.manual_seed(0)
    m = GraphGPT(ModelConfig.preset(size, n_words=n_words, n_users=n_users, n_items=n_items))
    m.set_dropout(0.5)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.0)
    ids = torch.randint(0, n_words + n_users + n_items, (batch, length))
    mask = torch.ones_like(ids)
    bias = torch.rand(batch, length, length)
    targets = torch.zeros(batch, n_items)
    targets[:, :4] = 1
    out = {"size": size, "batch": batch, "length": length, "params": sum(p.numel() for p in m.parameters())}
    for phase in ("train", "encode"):
        times = []
        for step in range(steps + 1):
            t = time.perf_counter()
            if phase == "train":
                m.train()
                loss = m(ids, mask, bias, targets=targets)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
            else:
                m.eval()
                with torch.no_grad():
                    m.user_vector(ids, mask, bias)
            if step:  # the first call warms up
                times.append(time.perf_counter() - t)
        out[f"{phase}_tokens_per_s"] = round(batch * length / float(np.median(times)), 1)
    return out


def _keep_other_variants(result: dict, path: Path) -> None:
    """Several bench processes may cover different variants or seeds of one dataset: keep what the others
    wrote, merging a variant's runs by seed (this process's run of a seed wins)."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    if old.get("dataset", {}).get("fingerprint") != result["dataset"]["fingerprint"]:
        return
    # runs made under another default recipe are not rows of this one (full = the default at the time)
    if old.get("default_recipe") != result["default_recipe"]:
        return
    merged = dict(old.get("variants", {}))
    # variants whose runs all came from other invocations, whose commands this file's header does not show
    earlier = sorted(set(merged) - set(result["variants"]))
    if earlier:
        result["kept_from_earlier"] = earlier
    for name, v in result["variants"].items():
        mine = {r["seed"] for r in v["runs"]}
        kept = [r for r in merged.get(name, {}).get("runs", []) if r["seed"] not in mine]
        runs = sorted(kept + v["runs"], key=lambda r: r["seed"])
        merged[name] = {**v, "runs": runs, "summary": summarise(runs)}
    result["variants"] = merged
    result["seeds"] = sorted(set(old.get("seeds", [])) | set(result["seeds"]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="prepared dataset folder (or a raw RecBole folder)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=None, help=f"names from {sorted(VARIANTS)} or --extra")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an ad-hoc variant: TrainConfig overrides as a JSON object (e.g. for a hyper-parameter sweep)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (one process each)")
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], help="TrainConfig key=JSON for all"
    )
    ap.add_argument(
        "--runs-root", default=str(Path(os.environ.get("EDGEREC_HOME", ".edgerec")) / "runs" / "bench")
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-dir", default="/tmp/edgerec-model-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--throughput", action="store_true", help="only the synthetic tokens/s measurement")
    ap.add_argument("--length", type=int, default=48, help="prompt length of the --throughput batches")
    ap.add_argument("--only-finished", action="store_true", help="tabulate finished runs, train nothing")
    ap.add_argument(
        "--rebase",
        metavar="VARIANT",
        help="the default recipe changed to what VARIANT was: rewrite the results file so its runs are "
        "`full` (needs --old-default and --old-full-as; trains nothing)",
    )
    ap.add_argument(
        "--old-default",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="with --rebase: the TrainConfig fields that turn today's default into the file's old one",
    )
    ap.add_argument("--old-full-as", help="with --rebase: the name the old default's runs get")
    args = ap.parse_args(argv)
    variants = dict(VARIANTS)
    for item in args.extra:
        name, _, v = item.partition("=")
        try:
            variants[name] = json.loads(v)
        except json.JSONDecodeError as e:
            ap.error(f"--extra {name}: not a JSON object: {e}")
        if not name or not isinstance(variants[name], dict):
            ap.error(f"--extra needs NAME=JSON-object, got {item!r}")
    names = args.variants or (list(VARIANTS) if not args.extra else [e.partition("=")[0] for e in args.extra])
    unknown = [n for n in names if n not in variants]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {sorted(variants)} or define them with --extra")

    sys.path.insert(0, str(ROOT))
    if args.throughput:
        import resource

        import torch

        torch.set_num_threads(args.threads)
        from training.data.sources import load_dataset

        ds = load_dataset(args.dataset)
        rows = [throughput("small", 6000, ds.n_users, ds.n_items, 64, args.length, 10)]
        res = {
            "command": "python benchmarks/model_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "dataset": ds.name,
            "threads": args.threads,
            "rows": rows,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        path = Path(args.out) / f"model-throughput-{ds.name}.json"
        path.write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return
    from training.data.sources import load_dataset

    ds = load_dataset(args.dataset)
    if args.rebase:
        stem = Path(args.out) / f"model-{ds.name}"
        if not args.old_full_as or not args.old_default:
            ap.error("--rebase needs --old-default KEY=JSON and --old-full-as NAME")
        old_default: dict = {}
        for item in args.old_default:
            k, _, v = item.partition("=")
            old_default = _merge(old_default, {k: json.loads(v)})
        try:
            doc = rebase(
                json.loads(stem.with_suffix(".json").read_text()), args.rebase, old_default, args.old_full_as
            )
        except (OSError, ValueError) as e:
            ap.error(f"--rebase: {e}")
        stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        write_markdown(doc, stem.with_suffix(".md"))
        plot(doc, stem.with_suffix(".png"))
        print(stem.with_suffix(".md").read_text())
        return
    common: dict = {}
    for item in args.overrides:
        k, _, v = item.partition("=")
        try:
            common[k] = json.loads(v)
        except json.JSONDecodeError:
            common[k] = v
    result = {
        "dataset": {k: v for k, v in ds.summary().items() if k != "text_fields"},
        "command": "python benchmarks/model_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads_per_run": args.threads},
        "seeds": args.seeds,
        "default_variant": "full",  # `edgerec train DATASET` with no options (plus common_overrides)
        "default_recipe": _default_recipe(),
        "common_overrides": common,
        "variants": {},
        "baselines": _baselines(ds.name, ds.fingerprint),
    }
    t0 = time.time()
    out = Path(args.out)
    stem = out / f"model-{ds.name}"
    names = distinct_recipes(names, {n: _merge(common, variants[n]) for n in names})
    tasks = [(name, seed) for name in names for seed in args.seeds]
    run_dirs = {t: Path(args.runs_root) / ds.name / f"{t[0]}-s{t[1]}" for t in tasks}
    if args.only_finished:
        tasks = [t for t in tasks if (run_dirs[t] / "metrics.json").exists()]

    def one(task: tuple[str, int]) -> dict:
        name, seed = task
        overrides = _merge(_merge(common, variants[name]), {"seed": seed})
        m = run_one(args.dataset, run_dirs[task], overrides, args.threads, Path(args.log_dir))
        if m.get("fingerprint") != ds.fingerprint:
            raise RuntimeError(
                f"{run_dirs[task]} was trained on another split ({m.get('fingerprint', '')[:12]})"
            )
        print(
            f"  {name} seed {seed}: test " + " ".join(f"{k} {m['test'][k]:.4f}" for k in METRICS), flush=True
        )
        return {"seed": seed, "run_dir": str(run_dirs[task]), **m}

    # Runs are independent processes; threads only wait on them. A failed run is reported, the rest go on.
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {t: pool.submit(one, t) for t in tasks}
    done: dict[tuple[str, int], dict] = {}
    for t, f in futures.items():
        try:
            done[t] = f.result()
        except Exception as e:  # noqa: BLE001 - keep the other runs' results
            print(f"  {t[0]} seed {t[1]}: FAILED: {e}", file=sys.stderr, flush=True)
    for name in names:
        runs = [done[(name, seed)] for seed in args.seeds if (name, seed) in done]
        if not runs:
            continue
        result["variants"][name] = {"overrides": variants[name], "runs": runs, "summary": summarise(runs)}
    if result["variants"]:
        out.mkdir(parents=True, exist_ok=True)
        _keep_other_variants(result, stem.with_suffix(".json"))
        result["bench_seconds"] = round(time.time() - t0, 1)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
        write_markdown(result, stem.with_suffix(".md"))
        plot(result, stem.with_suffix(".png"))
    if stem.with_suffix(".md").exists():
        print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

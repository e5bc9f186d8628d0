"""What every reader shares: the format error that names file, line and field, the reader options, gzip
detection by magic bytes, line iteration and text cleaning."""

from __future__ import annotations

import gzip
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

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

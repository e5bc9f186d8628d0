"""CSV/TSV interactions with named columns (gzip or plain), plus an optional item CSV holding item text.

Columns come from flags; where a flag is left out, common names are tried (``user_id``, ``userId``,
``user``, ...), and what was used is recorded in ``RawInteractions.info`` so the CLI can show it.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from training.data.dataset import RawInteractions
from training.data.text_io import (
    DataFormatError,
    ReadOptions,
    canonical_field,
    clean_text,
    iter_lines,
    parse_numbers,
)

CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
GUESSES = {
    "user": ("user_id", "userId", "userid", "user", "reviewerID", "customer_id"),
    "item": ("item_id", "itemId", "itemid", "item", "movieId", "movie_id", "asin", "product_id"),
    "rating": ("rating", "ratings", "score", "overall"),
    "time": ("timestamp", "time", "ts", "unixReviewTime"),
}
csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))  # long descriptions exceed the 128 KiB default


def find_csv_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(CSV_SUFFIXES))


def find_csv_file(folder: Path) -> Path | None:
    files = find_csv_files(folder)
    return files[0] if files else None


def _sniff_sep(path: Path, header: str) -> str:
    counts = {s: header.count(s) for s in ("\t", ",", ";", "|")}
    sep, n = max(counts.items(), key=lambda kv: kv[1])
    if n == 0:
        raise DataFormatError(path, 1, None, "cannot tell the separator from the header; pass --sep")
    return sep


def _rows(path: Path, sep: str | None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for the header (first) and every non-empty row after it."""
    # iter_lines decodes line by line, so a bad byte is reported on its own line (a decoding stream cannot).
    lines = (line + "\n" for _, line in iter_lines(path))
    first = next(lines, "")
    if not first.strip():
        raise DataFormatError(path, 1, None, "file is empty or its first line is blank (expected a header)")
    reader = csv.reader(
        itertools.chain([first], lines), delimiter=sep or _sniff_sep(path, first), strict=True
    )
    try:
        for row in reader:
            if row and any(c.strip() for c in row):
                yield reader.line_num, row
    except csv.Error as exc:
        raise DataFormatError(path, reader.line_num, None, f"malformed CSV ({exc})") from None


def _show(header: list[str], limit: int = 120) -> str:
    text = ", ".join(header)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _column(path: Path, header: list[str], given: str | None, role: str, required: bool) -> int | None:
    if given is not None:
        if given not in header:
            raise DataFormatError(path, 1, given, f"{role} column not in header (header: {_show(header)})")
        return header.index(given)
    for name in GUESSES[role]:
        if name in header:
            return header.index(name)
    if required:
        raise DataFormatError(
            path, 1, f"{role}_id", f"no {role} column found (header: {_show(header)}); pass --{role}-col"
        )
    return None


def _times(path: Path, values: list[str], lines: list[int], col: str) -> np.ndarray:
    """Seconds since the epoch from numbers or ISO-8601 strings (naive times are taken as UTC)."""
    try:
        out = np.array(values, dtype=np.float64)
        if np.isfinite(out).all():
            return out
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for n, v in enumerate(values):
        try:
            out[n] = float(v)
        except ValueError:
            try:
                dt = datetime.fromisoformat(v.strip())
            except ValueError:
                raise DataFormatError(path, lines[n], col, f"not a number or ISO-8601 time: {v!r}") from None
            out[n] = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        if not np.isfinite(out[n]):
            raise DataFormatError(path, lines[n], col, f"not a finite number: {v!r}")
    return out


def read_csv(source: Path, opts: ReadOptions) -> RawInteractions:
    path = source
    if source.is_dir():
        files = find_csv_files(source)
        if len(files) != 1:
            names = ", ".join(f.name for f in files) or "none"
            raise DataFormatError(
                source, None, None, f"expected one CSV/TSV file in the folder, found {names}"
            )
        path = files[0]
    rows = _rows(path, opts.sep)
    first = next(rows, None)
    if first is None:
        raise DataFormatError(path, 1, None, "file is empty (expected a header line)")
    header = [h.strip() for h in first[1]]
    cu = _column(path, header, opts.user_col, "user", True)
    ci = _column(path, header, opts.item_col, "item", True)
    cr = _column(path, header, opts.rating_col, "rating", False)
    ct = _column(path, header, opts.time_col, "time", False)
    assert cu is not None and ci is not None
    users: list[str] = []
    items: list[str] = []
    rvals: list[str] = []
    tvals: list[str] = []
    lines: list[int] = []
    for lineno, row in rows:
        if len(row) != len(header):
            raise DataFormatError(path, lineno, None, f"expected {len(header)} fields, got {len(row)}")
        u, i = row[cu].strip(), row[ci].strip()
        if not u or not i:
            raise DataFormatError(path, lineno, header[cu] if not u else header[ci], "empty id")
        users.append(u)
        items.append(i)
        lines.append(lineno)
        if cr is not None:
            rvals.append(row[cr])
        if ct is not None:
            tvals.append(row[ct])
    if not users:
        raise DataFormatError(path, 2, None, "no interaction rows after the header")
    ratings = None if cr is None else parse_numbers(rvals, path, lines, header[cr]).astype(np.float32)
    times = None if ct is None else _times(path, tvals, lines, header[ct])
    info: dict = {
        "format": "csv",
        "files": [str(path)],
        "columns": {
            "user": header[cu],
            "item": header[ci],
            "rating": None if cr is None else header[cr],
            "time": None if ct is None else header[ct],
        },
    }
    item_text: dict[str, dict[str, str]] = {}
    if opts.item_file is not None:
        item_text, text_info = read_item_csv(Path(opts.item_file), opts, header[ci])
        info["files"].append(str(opts.item_file))
        info["columns"].update(text_info)
    return RawInteractions(users, items, ratings, times, item_text, source=str(path), info=info)


def read_item_csv(
    path: Path, opts: ReadOptions, inter_item_col: str
) -> tuple[dict[str, dict[str, str]], dict]:
    """Item id -> {canonical field: text} from an item CSV; text columns are ``col`` or ``col=field``."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such item file")
    rows = _rows(path, None)  # its own separator, sniffed: --sep is for the interactions file
    first = next(rows, None)
    if first is None:
        raise DataFormatError(path, 1, None, "file is empty (expected a header line)")
    header = [h.strip() for h in first[1]]
    id_name = opts.item_id_col or (inter_item_col if inter_item_col in header else None)
    cid = _column(path, header, id_name, "item", True)
    assert cid is not None
    specs = opts.text_cols or [h for k, h in enumerate(header) if k != cid]
    cols: list[tuple[int, str]] = []
    for spec in specs:
        col, _, name = spec.partition("=")
        col = col.strip()
        if col not in header:
            raise DataFormatError(path, 1, col, f"text column not in header (header: {_show(header)})")
        cols.append((header.index(col), name.strip() or canonical_field(col)))
    out: dict[str, dict[str, str]] = {}
    for lineno, row in rows:
        if len(row) != len(header):
            raise DataFormatError(path, lineno, None, f"expected {len(header)} fields, got {len(row)}")
        item = row[cid].strip()
        if not item:
            raise DataFormatError(path, lineno, header[cid], "empty id")
        if item in out:
            continue
        fields = {}
        for k, name in cols:
            text = clean_text(row[k])
            if text:
                fields[name] = text
        out[item] = fields
    return out, {"item_id": header[cid], "text": {header[k]: name for k, name in cols}}

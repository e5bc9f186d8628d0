"""Readers that turn a data source into :class:`training.dataset.RawInteractions`.

Supported: RecBole atomic files (a folder or a ``.inter`` path). More formats are added here, one function each.
Malformed input raises :class:`DataFormatError` naming the file, line and field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.dataset import RawInteractions

TEXT_FIELDS_RECBOLE = {"title", "movie_title", "brand", "categories", "class", "description", "release_year"}


class DataFormatError(ValueError):
    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str):
        where = f"{path}" + (f", line {line}" if line is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field = str(path), line, field


def _read_atomic(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """Header names, header types and rows of one RecBole atomic file."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        names, types = [], []
        for col in header:
            if ":" not in col:
                raise DataFormatError(path, 1, col, "header column must look like name:type")
            n, t = col.rsplit(":", 1)
            names.append(n)
            types.append(t)
        rows = []
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != len(names):
                raise DataFormatError(path, lineno, None, f"expected {len(names)} tab-separated fields, got {len(parts)}")
            rows.append(parts)
    return names, types, rows


def read_recbole(source: str | Path) -> RawInteractions:
    p = Path(source)
    if p.is_dir():
        inters = sorted(p.glob("*.inter"))
        if not inters:
            raise DataFormatError(p, None, None, "folder holds no .inter file")
        inter = inters[0]
    else:
        inter = p
    if not inter.exists():
        raise FileNotFoundError(f"{inter}: no such file")
    names, _, rows = _read_atomic(inter)
    for need in ("user_id", "item_id"):
        if need not in names:
            raise DataFormatError(inter, 1, need, "required column missing from header")
    ui, ii = names.index("user_id"), names.index("item_id")
    users = [r[ui] for r in rows]
    items = [r[ii] for r in rows]
    ratings = timestamps = None
    for col, kind in (("rating", "ratings"), ("timestamp", "timestamps")):
        if col in names:
            k = names.index(col)
            vals = np.empty(len(rows), dtype=np.float64)
            for n, r in enumerate(rows):
                try:
                    vals[n] = float(r[k])
                except ValueError:
                    raise DataFormatError(inter, n + 2, col, f"not a number: {r[k]!r}") from None
            if kind == "ratings":
                ratings = vals.astype(np.float32)
            else:
                timestamps = vals
    item_text: dict[str, dict[str, str]] = {}
    item_file = inter.with_suffix(".item")
    if item_file.exists():
        inames, itypes, irows = _read_atomic(item_file)
        if "item_id" not in inames:
            raise DataFormatError(item_file, 1, "item_id", "required column missing from header")
        k_id = inames.index("item_id")
        text_cols = [
            (k, n) for k, (n, t) in enumerate(zip(inames, itypes, strict=True))
            if k != k_id and (t in ("token_seq",) or n in TEXT_FIELDS_RECBOLE)
        ]
        for r in irows:
            item_text[r[k_id]] = {_canonical(n): r[k] for k, n in text_cols if r[k]}
    return RawInteractions(users, items, ratings, timestamps, item_text, source=str(inter))


def _canonical(name: str) -> str:
    """Map source-specific text field names onto the prompt vocabulary (title, brand, categories, description)."""
    return {"movie_title": "title", "class": "categories", "store": "brand", "category": "categories"}.get(name, name)

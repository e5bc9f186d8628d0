"""RecBole atomic files (``.inter`` with optional ``.item`` / ``.user``) into RawInteractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.dataset import RawInteractions
from training.data.text_io import DataFormatError, canonical_field, clean_text, iter_lines, parse_numbers

TEXT_FIELDS_RECBOLE = {"title", "movie_title", "brand", "categories", "class", "description", "release_year"}


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

"""Amazon review dumps (McAuley lab) as JSON lines, gzip or plain, in the 2018 or the 2023 layout.

The 2014 dumps use the 2018 key names (their metadata is Python literals, also read here). Reviews give
the interactions (rating, time, review text); the optional metadata file gives item text, reduced to the
canonical fields title, brand, categories (path joined with " > ") and description (list joined with " ").
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from training.data.dataset import RawInteractions
from training.data.text_io import DataFormatError, clean_text, iter_lines


@dataclass(frozen=True)
class Layout:
    name: str
    user: str
    item: str
    rating: str
    time: str
    text: str
    time_scale: float  # multiply to get seconds
    meta_item: str
    meta_fields: tuple[
        tuple[str, str], ...
    ]  # (source key, canonical field), first present key wins per field


LAYOUTS = {
    "amazon2018": Layout(
        "amazon2018",
        "reviewerID",
        "asin",
        "overall",
        "unixReviewTime",
        "reviewText",
        1.0,
        "asin",
        (
            ("title", "title"),
            ("brand", "brand"),
            ("category", "categories"),
            ("categories", "categories"),
            ("description", "description"),
        ),
    ),
    "amazon2023": Layout(
        "amazon2023",
        "user_id",
        "parent_asin",
        "rating",
        "timestamp",
        "text",
        1e-3,
        "parent_asin",
        (
            ("title", "title"),
            ("store", "brand"),
            ("categories", "categories"),
            ("description", "description"),
        ),
    ),
}
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson", ".gz")


@dataclass
class AmazonFiles:
    layout: str
    reviews: Path
    meta: Path | None


def _parse(path: Path, lineno: int, line: str) -> dict:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        rec = _python_literal(line)
        if rec is None:
            raise DataFormatError(path, lineno, None, f"bad JSON ({exc})") from None
    if not isinstance(rec, dict):
        raise DataFormatError(path, lineno, None, f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _python_literal(line: str) -> object | None:
    """The 2014 metadata dumps hold Python dict literals ({'asin': ...}), not JSON; read those safely."""
    if not line.lstrip().startswith("{'"):
        return None
    try:
        return ast.literal_eval(line)  # literals only: never evaluates code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _first_record(path: Path) -> tuple[int, dict]:
    for lineno, line in iter_lines(path):
        if line.strip():
            return lineno, _parse(path, lineno, line)
    raise DataFormatError(path, 1, None, "file is empty")


def _classify(rec: dict) -> tuple[str, str] | None:
    """('reviews' | 'meta', layout name) from the keys of one record, or None when it is neither."""
    if "reviewerID" in rec and "asin" in rec:
        return "reviews", "amazon2018"
    if "user_id" in rec and "parent_asin" in rec:
        return "reviews", "amazon2023"
    if "parent_asin" in rec:
        return "meta", "amazon2023"
    if "asin" in rec:
        return "meta", "amazon2018"
    return None


def detect_layout(path: Path) -> str:
    """Layout of a reviews file from its first record."""
    lineno, rec = _first_record(path)
    kind = _classify(rec)
    if kind is None:
        raise DataFormatError(
            path,
            lineno,
            None,
            "JSON record matches no known layout (expected reviewerID+asin or user_id+parent_asin)",
        )
    if kind[0] == "meta":
        raise DataFormatError(
            path, lineno, None, "this is an item metadata file; pass the reviews file (and --meta)"
        )
    return kind[1]


def find_amazon_files(folder: Path, meta: Path | None) -> AmazonFiles | None:
    """The reviews file and optional metadata file in a folder, told apart by content; None if none."""
    found: dict[str, list[tuple[Path, str]]] = {"reviews": [], "meta": []}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith(".") or not f.name.endswith(JSON_SUFFIXES):
            continue
        first = next(((n, line) for n, line in iter_lines(f) if line.strip()), None)
        if first is None or not first[1].lstrip().startswith("{"):
            continue
        kind = _classify(_parse(f, first[0], first[1]))
        if kind is not None:
            found[kind[0]].append((f, kind[1]))
    if not found["reviews"] and not found["meta"]:
        return None
    if len(found["reviews"]) != 1:
        names = ", ".join(f.name for f, _ in found["reviews"]) or "none"
        raise DataFormatError(
            folder, None, None, f"expected one Amazon reviews file, found {names}; pass the file"
        )
    if meta is None and len(found["meta"]) > 1:
        names = ", ".join(f.name for f, _ in found["meta"])
        raise DataFormatError(folder, None, None, f"several metadata files ({names}); choose one with --meta")
    reviews, layout = found["reviews"][0]
    return AmazonFiles(layout, reviews, meta or (found["meta"][0][0] if found["meta"] else None))


def _number(path: Path, lineno: int, key: str, value: object) -> float:
    if isinstance(value, bool) or value is None:
        raise DataFormatError(path, lineno, key, f"not a number: {value!r}")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataFormatError(path, lineno, key, f"not a number: {value!r}") from None
    if not np.isfinite(out):
        raise DataFormatError(path, lineno, key, f"not a finite number: {value!r}")
    return out


def _ident(path: Path, lineno: int, key: str, value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataFormatError(path, lineno, key, f"expected a non-empty id string, got {value!r}")


def read_reviews(path: Path, lay: Layout) -> RawInteractions:
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    times: list[float] = []
    reviews: dict[tuple[str, str], tuple[float, str]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        rec = _parse(path, lineno, line)
        for key in (lay.user, lay.item, lay.rating, lay.time):
            if key not in rec:
                raise DataFormatError(path, lineno, key, f"required key missing ({lay.name} layout)")
        u = _ident(path, lineno, lay.user, rec[lay.user])
        i = _ident(path, lineno, lay.item, rec[lay.item])
        users.append(u)
        items.append(i)
        ratings.append(_number(path, lineno, lay.rating, rec[lay.rating]))
        t = _number(path, lineno, lay.time, rec[lay.time]) * lay.time_scale
        times.append(t)
        text = clean_text(rec.get(lay.text))
        if text:
            # Keep the earliest review of a repeated (user, item): prepare() keeps that event too.
            old = reviews.get((u, i))
            if old is None or t < old[0]:
                reviews[(u, i)] = (t, text)
    if not users:
        raise DataFormatError(path, 1, None, "file is empty (no review records)")
    return RawInteractions(
        users,
        items,
        np.asarray(ratings, dtype=np.float32),
        np.asarray(times, dtype=np.float64),
        reviews={k: v[1] for k, v in reviews.items()},
        source=str(path),
    )


def read_meta(path: Path, wanted: set[str]) -> dict[str, dict[str, str]]:
    """Item text of the items in ``wanted`` (metadata dumps hold far more items than a review subset)."""
    lineno0, first = _first_record(path)
    kind = _classify(first)
    if kind is None or kind[0] != "meta":
        raise DataFormatError(
            path,
            lineno0,
            "asin",
            "not an item metadata file (records need 'asin' or 'parent_asin' and no user id)",
        )
    lay = LAYOUTS[kind[1]]
    out: dict[str, dict[str, str]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        rec = _parse(path, lineno, line)
        if lay.meta_item not in rec:
            raise DataFormatError(path, lineno, lay.meta_item, "required key missing (item metadata)")
        item = _ident(path, lineno, lay.meta_item, rec[lay.meta_item])
        if item not in wanted or item in out:
            continue
        fields: dict[str, str] = {}
        for key, name in lay.meta_fields:
            if name in fields or key not in rec:
                continue
            text = clean_text(rec[key], list_sep=" > " if name == "categories" else " ")
            if text:
                fields[name] = text
        out[item] = fields
    return out


def read_amazon(source: Path, *, layout: str | None = None, meta: Path | None = None) -> RawInteractions:
    """Reviews file (or a folder holding it and maybe a metadata file) in the given or detected layout."""
    if source.is_dir():
        files = find_amazon_files(source, meta)
        if files is None:
            raise DataFormatError(source, None, None, "folder holds no Amazon JSON-lines file")
        reviews_path, meta = files.reviews, files.meta
        layout = layout or files.layout
    else:
        reviews_path = source
        layout = layout or detect_layout(source)
    if meta is not None and not Path(meta).exists():
        raise FileNotFoundError(f"{meta}: no such metadata file")
    raw = read_reviews(reviews_path, LAYOUTS[layout])
    if meta is not None:
        raw.item_text = read_meta(Path(meta), set(raw.items))
    raw.info = {"format": layout, "files": [str(reviews_path)] + ([str(meta)] if meta else [])}
    return raw

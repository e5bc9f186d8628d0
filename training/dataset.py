"""Prepared datasets: the one in-memory and on-disk form every later step reads.

Readers (``training.ingest``) produce :class:`RawInteractions`; :func:`prepare` filters (rating threshold, iterative
k-core), maps ids densely, splits, and returns a :class:`PreparedDataset`, which saves to and loads from a folder of
``.npy`` + JSON files (no pickle), fast enough that amazon-beauty loads in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


@dataclass
class RawInteractions:
    """Interactions as read from a source, before filtering. One row per (user, item) event, in file order."""

    users: list[str]
    items: list[str]
    ratings: np.ndarray | None = None  # float32, same length, or None when the source has no ratings
    timestamps: np.ndarray | None = None  # float64, same length, or None
    # item raw id -> {field: text}; only text fields (title, brand, categories, description, ...)
    item_text: dict[str, dict[str, str]] = field(default_factory=dict)
    # (user raw id, item raw id) -> review text, where the source has reviews
    reviews: dict[tuple[str, str], str] = field(default_factory=dict)
    source: str = ""


@dataclass
class PreparedDataset:
    name: str
    user_ids: list[str]  # dense index -> raw id
    item_ids: list[str]
    train: sp.csr_matrix  # users x items, float32 0/1
    valid: sp.csr_matrix
    test: sp.csr_matrix
    item_text: dict[str, list[str]]  # field -> one string per item ("" when missing)
    split: dict  # {"kind": "random"|"temporal", "seed": int, ...}
    fingerprint: str  # sha256 over ids and splits: identifies the exact data a model was trained on
    reviews: dict[tuple[int, int], str] = field(default_factory=dict)  # (user idx, item idx) -> text, train only
    source: str = ""

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    def item_index(self) -> dict[str, int]:
        return {it: i for i, it in enumerate(self.item_ids)}

    def summary(self) -> dict:
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "train": int(self.train.nnz),
            "valid": int(self.valid.nnz),
            "test": int(self.test.nnz),
            "text_fields": sorted(self.item_text),
            "split": self.split,
            "fingerprint": self.fingerprint,
        }

    # ---------------------------------------------------------------- persistence
    def save(self, out_dir: str | Path) -> Path:
        """Write atomically: into a temporary sibling folder, then rename over ``out_dir``."""
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for name in SPLITS:
                m = getattr(self, name).tocsr()
                np.save(tmp / f"{name}.indptr.npy", m.indptr.astype(np.int64))
                np.save(tmp / f"{name}.indices.npy", m.indices.astype(np.int32))
            _dump_json(tmp / "user_ids.json", self.user_ids)
            _dump_json(tmp / "item_ids.json", self.item_ids)
            _dump_json(tmp / "item_text.json", self.item_text)
            _dump_json(tmp / "reviews.json", [[u, i, t] for (u, i), t in self.reviews.items()])
            meta = {
                "format_version": FORMAT_VERSION,
                **self.summary(),
                "source": self.source,
            }
            _dump_json(tmp / "meta.json", meta)
            if out.exists():
                backup = out.with_name(f".{out.name}.old")
                if backup.exists():
                    shutil.rmtree(backup)
                os.replace(out, backup)
                os.replace(tmp, out)
                shutil.rmtree(backup)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | Path) -> PreparedDataset:
        p = Path(path)
        meta_path = p / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{p} is not a prepared dataset (no meta.json); run `edgerec data prepare` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{p}: prepared-data format {meta.get('format_version')} != {FORMAT_VERSION}; re-prepare")
        user_ids = json.loads((p / "user_ids.json").read_text())
        item_ids = json.loads((p / "item_ids.json").read_text())
        shape = (len(user_ids), len(item_ids))
        mats = {}
        for name in SPLITS:
            indptr = np.load(p / f"{name}.indptr.npy")
            indices = np.load(p / f"{name}.indices.npy")
            data = np.ones(len(indices), dtype=np.float32)
            mats[name] = sp.csr_matrix((data, indices, indptr), shape=shape)
        reviews_path = p / "reviews.json"
        reviews = {}
        if reviews_path.exists():
            reviews = {(int(u), int(i)): t for u, i, t in json.loads(reviews_path.read_text())}
        return cls(
            name=meta["name"],
            user_ids=user_ids,
            item_ids=item_ids,
            train=mats["train"],
            valid=mats["valid"],
            test=mats["test"],
            item_text=json.loads((p / "item_text.json").read_text()),
            split=meta["split"],
            fingerprint=meta["fingerprint"],
            reviews=reviews,
            source=meta.get("source", ""),
        )


def _dump_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


# -------------------------------------------------------------------- filtering
def kcore(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the rows that survive iterative k-core filtering (both users and items with >= k rows)."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        u_cnt = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        i_cnt = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        ok = keep & (u_cnt[users] >= k) & (i_cnt[items] >= k)
        if ok.sum() == keep.sum():
            return ok
        keep = ok


def prepare(
    raw: RawInteractions,
    name: str,
    *,
    rating_threshold: float | None = 3.0,
    k_core: int = 5,
    split: str = "random",
    seed: int = 98765,
) -> PreparedDataset:
    """Threshold (keep rating > threshold where ratings exist), dedupe, k-core, map ids densely, split."""
    if len(raw.users) == 0:
        raise ValueError(f"{raw.source or name}: no interactions were read")
    u_raw = np.asarray(raw.users, dtype=object)
    i_raw = np.asarray(raw.items, dtype=object)
    keep = np.ones(len(u_raw), dtype=bool)
    if raw.ratings is not None and rating_threshold is not None:
        keep &= np.asarray(raw.ratings) > rating_threshold
    u_codes, u_uni = _codes(u_raw)
    i_codes, i_uni = _codes(i_raw)
    ts = None if raw.timestamps is None else np.asarray(raw.timestamps, dtype=np.float64)
    # Dedupe (user, item): keep the first occurrence (earliest in file order, which sources keep chronological).
    order = np.flatnonzero(keep)
    pair = u_codes[order].astype(np.int64) * (len(i_uni) + 1) + i_codes[order]
    _, first = np.unique(pair, return_index=True)
    rows = order[np.sort(first)]
    core = kcore(u_codes[rows], i_codes[rows], k_core)
    rows = rows[core]
    if len(rows) == 0:
        raise ValueError(f"{raw.source or name}: nothing is left after rating threshold and {k_core}-core filtering")

    # Dense ids follow sorted raw ids, so a given input always maps to the same ids.
    uu, u_dense = np.unique(u_codes[rows], return_inverse=True)
    ii, i_dense = np.unique(i_codes[rows], return_inverse=True)
    user_ids = [str(u_uni[c]) for c in uu]
    item_ids = [str(i_uni[c]) for c in ii]
    n_u, n_i = len(user_ids), len(item_ids)
    row_ts = None if ts is None else ts[rows]

    if split == "random":
        masks = _split_random(u_dense, n_u, seed)
    elif split == "temporal":
        masks = _split_temporal(u_dense, n_u, row_ts)
    else:
        raise ValueError(f"unknown split {split!r}; use 'random' or 'temporal'")
    mats = {
        s: sp.csr_matrix(
            (np.ones(int(m.sum()), dtype=np.float32), (u_dense[m], i_dense[m])), shape=(n_u, n_i)
        )
        for s, m in zip(SPLITS, masks, strict=True)
    }
    for m in mats.values():
        m.sum_duplicates()
        m.sort_indices()

    fields = sorted({f for d in raw.item_text.values() for f in d})
    item_text = {f: [raw.item_text.get(it, {}).get(f, "") for it in item_ids] for f in fields}
    u_index = {u: k for k, u in enumerate(user_ids)}
    i_index = {it: k for k, it in enumerate(item_ids)}
    train = mats["train"]
    reviews = {}
    for (u, it), text in raw.reviews.items():
        ui, ii_ = u_index.get(u), i_index.get(it)
        if ui is not None and ii_ is not None and text and train[ui, ii_]:
            reviews[(ui, ii_)] = text
    split_info = {"kind": split, "seed": seed if split == "random" else None, "k_core": k_core,
                  "rating_threshold": rating_threshold if raw.ratings is not None else None}
    return PreparedDataset(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        train=train,
        valid=mats["valid"],
        test=mats["test"],
        item_text=item_text,
        split=split_info,
        fingerprint=fingerprint(user_ids, item_ids, mats, split_info),
        reviews=reviews,
        source=raw.source,
    )


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uni, inv = np.unique(values.astype(str), return_inverse=True)
    return inv.astype(np.int64), uni


def _split_random(users: np.ndarray, n_users: int, seed: int) -> list[np.ndarray]:
    """The paper's protocol: per user, shuffle with a seeded RNG; n_val = n_test = max(1, floor(0.1 n))."""
    rng = np.random.default_rng(seed)
    n = len(users)
    train, valid, test = (np.zeros(n, dtype=bool) for _ in range(3))
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(n_users + 1))
    for u in range(n_users):
        rows = order[bounds[u] : bounds[u + 1]].copy()
        rng.shuffle(rows)
        k = max(1, len(rows) // 10)
        test[rows[:k]] = True
        valid[rows[k : 2 * k]] = True
        train[rows[2 * k :]] = True
    return [train, valid, test]


def _split_temporal(users: np.ndarray, n_users: int, ts: np.ndarray | None) -> list[np.ndarray]:
    """Leave-last-out: per user, the last event is test, the one before is validation (file order breaks ties)."""
    n = len(users)
    key = np.arange(n, dtype=np.float64) if ts is None else ts
    order = np.lexsort((np.arange(n), key, users))
    bounds = np.searchsorted(users[order], np.arange(n_users + 1))
    train = np.ones(n, dtype=bool)
    valid = np.zeros(n, dtype=bool)
    test = np.zeros(n, dtype=bool)
    last = order[bounds[1:] - 1]
    test[last] = True
    second = bounds[1:] - 2
    has_two = second >= bounds[:-1]
    valid[order[second[has_two]]] = True
    train &= ~(test | valid)
    return [train, valid, test]


def fingerprint(user_ids: list[str], item_ids: list[str], mats: dict, split_info: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([user_ids, item_ids, split_info], sort_keys=True).encode())
    for s in SPLITS:
        m = mats[s].tocsr()
        h.update(m.indptr.astype(np.int64).tobytes())
        h.update(m.indices.astype(np.int32).tobytes())
    return h.hexdigest()

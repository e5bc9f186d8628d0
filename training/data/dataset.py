"""Prepared datasets: the one in-memory and on-disk form every later step reads.

Readers (``training.data.ingest``) produce :class:`RawInteractions`; :func:`prepare` filters (rating
threshold, iterative k-core), maps ids densely, splits, and returns a :class:`PreparedDataset`, which saves to
and loads from a folder of ``.npy`` + JSON files (no pickle), fast: amazon-beauty loads in well under a
second.
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
    # user raw id -> {feature: value} (RecBole .user files); read for completeness, not used by prepare()
    user_features: dict[str, dict[str, str]] = field(default_factory=dict)
    # how the reader understood the source (format, files read, columns used), shown by `edgerec data prepare`
    info: dict = field(default_factory=dict)


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
    # (user idx, item idx) -> review text, train edges only
    reviews: dict[tuple[int, int], str] = field(default_factory=dict)
    source: str = ""
    # users x items, every event of every split: 1 + its position in the user's time line (timestamp, then
    # file order). None for folders prepared before it was kept. Not in the fingerprint: it follows from the
    # same source as the splits, and results keyed by the fingerprint stay valid.
    times: sp.csr_matrix | None = None

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
        check_replaceable(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        chmod_like_mkdir(tmp)  # mkdtemp makes 0700; the result should be readable like any folder
        try:
            for name in SPLITS:
                m = getattr(self, name).tocsr()
                np.save(tmp / f"{name}.indptr.npy", m.indptr.astype(np.int64))
                np.save(tmp / f"{name}.indices.npy", m.indices.astype(np.int32))
            _dump_json(tmp / "user_ids.json", self.user_ids)
            _dump_json(tmp / "item_ids.json", self.item_ids)
            _dump_json(tmp / "item_text.json", self.item_text)
            _dump_json(tmp / "reviews.json", [[u, i, t] for (u, i), t in self.reviews.items()])
            if self.times is not None:
                t = self.times.tocsr()
                t.sort_indices()
                np.save(tmp / "times.indptr.npy", t.indptr.astype(np.int64))
                np.save(tmp / "times.indices.npy", t.indices.astype(np.int32))
                np.save(tmp / "times.data.npy", t.data.astype(np.float64))
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
                try:
                    os.replace(tmp, out)
                except BaseException:
                    os.replace(backup, out)  # put the previous dataset back
                    raise
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
            raise FileNotFoundError(
                f"{p} is not a prepared dataset (no meta.json); run `edgerec data prepare` first"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{p}: prepared-data format {meta.get('format_version')} != {FORMAT_VERSION}; re-prepare"
            )
        user_ids = json.loads((p / "user_ids.json").read_text())
        item_ids = json.loads((p / "item_ids.json").read_text())
        shape = (len(user_ids), len(item_ids))
        mats = {}
        for name in SPLITS:
            indptr = np.load(p / f"{name}.indptr.npy")
            indices = np.load(p / f"{name}.indices.npy")
            # Cheap consistency checks: a damaged folder fails here, clearly, not deep in training.
            if (
                len(indptr) != shape[0] + 1
                or indptr[-1] != len(indices)
                or (len(indices) and (indices.min() < 0 or indices.max() >= shape[1]))
            ):
                raise ValueError(
                    f"{p}: {name} matrix does not match {shape[0]} users x {shape[1]} items; re-prepare"
                )
            data = np.ones(len(indices), dtype=np.float32)
            mats[name] = sp.csr_matrix((data, indices, indptr), shape=shape)
        reviews_path = p / "reviews.json"
        reviews = {}
        if reviews_path.exists():
            reviews = {(int(u), int(i)): t for u, i, t in json.loads(reviews_path.read_text())}
        return cls(
            times=_load_times(p, shape),
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


def _load_times(p: Path, shape: tuple[int, int]) -> sp.csr_matrix | None:
    if not (p / "times.data.npy").exists():
        return None
    indptr = np.load(p / "times.indptr.npy")
    indices = np.load(p / "times.indices.npy")
    data = np.load(p / "times.data.npy")
    if len(indptr) != shape[0] + 1 or indptr[-1] != len(indices) or len(data) != len(indices):
        raise ValueError(f"{p}: times do not match {shape[0]} users x {shape[1]} items; re-prepare")
    return sp.csr_matrix((data, indices, indptr), shape=shape)


def time_lines(users: np.ndarray, n_users: int, ts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): the events sorted by user, then timestamp (None: all equal), then their order in the
    arrays (file order); user u's time line is ``order[bounds[u]:bounds[u + 1]]``, oldest first."""
    n = len(users)
    key = np.zeros(n, dtype=np.float64) if ts is None else np.asarray(ts, dtype=np.float64)
    order = np.lexsort((np.arange(n), key, users))
    return order, np.searchsorted(users[order], np.arange(n_users + 1))


def time_matrix(users: np.ndarray, items: np.ndarray, ts: np.ndarray | None, shape: tuple[int, int]):
    """users x items: 1 + each event's position in its user's time line (:func:`time_lines`)."""
    order, bounds = time_lines(users, shape[0], ts)
    pos = np.empty(len(users), dtype=np.float64)
    pos[order] = np.arange(len(users)) - np.repeat(bounds[:-1], np.diff(bounds))
    m = sp.csr_matrix((pos + 1, (users, items)), shape=shape)
    m.sort_indices()
    return m


def check_replaceable(out: Path) -> None:
    """Saving replaces ``out`` wholesale: only ever replace an earlier prepared dataset or an empty folder."""
    if out.exists() and not (out.is_dir() and ((out / "meta.json").exists() or not any(out.iterdir()))):
        raise FileExistsError(f"{out} exists and is not a prepared dataset; refusing to replace it")


def _dump_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


# -------------------------------------------------------------------- filtering
def kcore(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask of the rows that survive iterative k-core filtering (every user and item keeps >= k rows)."""
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
    if len(raw.items) != len(raw.users):
        raise ValueError(
            f"{raw.source or name}: {len(raw.users)} users but {len(raw.items)} items in the events"
        )
    for what, arr in (("ratings", raw.ratings), ("timestamps", raw.timestamps)):
        if arr is not None and len(arr) != len(raw.users):
            raise ValueError(f"{raw.source or name}: {len(arr)} {what} for {len(raw.users)} events")
    if k_core < 1:
        raise ValueError(f"k_core must be >= 1, got {k_core}")
    u_raw = np.asarray(raw.users, dtype=object)
    i_raw = np.asarray(raw.items, dtype=object)
    keep = np.ones(len(u_raw), dtype=bool)
    if raw.ratings is not None and rating_threshold is not None:
        keep &= np.asarray(raw.ratings) > rating_threshold
    u_codes, u_uni = _codes(u_raw)
    i_codes, i_uni = _codes(i_raw)
    ts = None if raw.timestamps is None else np.asarray(raw.timestamps, dtype=np.float64)
    # Dedupe (user, item): keep the earliest event (by timestamp where there are timestamps, then file order;
    # Amazon dumps are sorted by item, not by time, so file order alone would not do).
    order = np.flatnonzero(keep)
    if ts is not None:
        order = order[np.argsort(ts[order], kind="stable")]
    pair = u_codes[order].astype(np.int64) * (len(i_uni) + 1) + i_codes[order]
    _, first = np.unique(pair, return_index=True)
    rows = np.sort(order[first])  # back to file order
    core = kcore(u_codes[rows], i_codes[rows], k_core)
    rows = rows[core]
    if len(rows) == 0:
        raise ValueError(
            f"{raw.source or name}: nothing is left after rating threshold and {k_core}-core filtering "
            "(lower the k-core or the rating threshold)"
        )

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
    reviews = _train_reviews(raw.reviews, u_index, i_index, train)
    split_info = {
        "kind": split,
        "seed": seed if split == "random" else None,
        "holdout": (
            "max(1, floor(0.1 n)) per user for valid and for test"
            if split == "random"
            else "leave-last-out: each user's last event is test, the one before it valid"
        ),
        "k_core": k_core,
        "rating_threshold": rating_threshold if raw.ratings is not None else None,
    }
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
        times=time_matrix(u_dense, i_dense, row_ts, (n_u, n_i)),
    )


def _train_reviews(
    raw_reviews: dict[tuple[str, str], str],
    u_index: dict[str, int],
    i_index: dict[str, int],
    train: sp.csr_matrix,
) -> dict[tuple[int, int], str]:
    """Reviews of train edges only: a review of a held-out edge would leak the answer into pre-training."""
    keys, texts = [], []
    for (u, it), text in raw_reviews.items():
        ui, ii = u_index.get(u), i_index.get(it)
        if ui is not None and ii is not None and text:
            keys.append((ui, ii))
            texts.append(text)
    if not keys:
        return {}
    k = np.asarray(keys, dtype=np.int64)
    n_items = train.shape[1]
    train_rows = np.repeat(np.arange(train.shape[0], dtype=np.int64), np.diff(train.indptr))
    hit = np.isin(k[:, 0] * n_items + k[:, 1], train_rows * n_items + train.indices)
    return {(int(a), int(b)): t for (a, b), t, h in zip(k, texts, hit, strict=True) if h}


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
    """Temporal leave-last-out: per user, the last event is test and the one before it validation.

    Events are ordered by timestamp, ties (and sources without timestamps) by file order. A user with a single
    event keeps it in test (nothing is left to train on, as with the random protocol's minimum of one).
    """
    n = len(users)
    order, bounds = time_lines(users, n_users, ts)
    sizes = np.diff(bounds)
    # Position of each sorted row counted from its user's end: 0 = last event.
    from_end = np.repeat(bounds[1:], sizes) - 1 - np.arange(n)
    test = np.zeros(n, dtype=bool)
    valid = np.zeros(n, dtype=bool)
    test[order[from_end == 0]] = True
    valid[order[from_end == 1]] = True
    return [~(test | valid), valid, test]


def fingerprint(user_ids: list[str], item_ids: list[str], mats: dict, split_info: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([user_ids, item_ids, split_info], sort_keys=True).encode())
    for s in SPLITS:
        m = mats[s].tocsr()
        h.update(m.indptr.astype(np.int64).tobytes())
        h.update(m.indices.astype(np.int32).tobytes())
    return h.hexdigest()


def chmod_like_mkdir(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)

"""FAISS inner-product index over item embeddings: build, save (index.faiss + index.json), load, measure.

Scores are inner products (``item_embeddings @ user_vector``), matching the encoder's training objective, so
every index uses ``METRIC_INNER_PRODUCT``. ``exact`` (IndexFlatIP) is the default: at catalogue sizes like
amazon-beauty (12k items) it answers in well under a millisecond; IVF and HNSW are for millions of items.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

INDEX_FILE = "index.faiss"
INDEX_META = "index.json"
INDEX_FORMAT = 1
KINDS = ("exact", "ivf", "hnsw")
GPU_KINDS = ("exact", "ivf")  # faiss has no GPU HNSW
GPU_MAX_K = 2048  # faiss GPU k-selection limit; larger searches run on the CPU copy

_PARAMS = {
    "exact": set(),
    "ivf": {"nlist", "nprobe", "train_size", "niter", "seed"},
    "hnsw": {"M", "ef_construction", "ef_search"},
}


@dataclass
class IndexInfo:
    """What ``index.json`` records; ``params`` holds every parameter with defaults filled in."""

    kind: str
    dim: int
    count: int
    params: dict[str, Any] = field(default_factory=dict)
    metric: str = "inner_product"
    format: int = INDEX_FORMAT
    faiss_version: str = faiss.__version__


@dataclass
class ItemIndex:
    """A FAISS index with its description. ``index`` is the one searched (GPU copy when loaded on a GPU)."""

    cpu_index: faiss.Index
    info: IndexInfo
    gpu_index: Any = None
    _gpu_res: Any = field(default=None, repr=False)  # keeps faiss GPU memory alive as long as the index

    @property
    def index(self) -> faiss.Index:
        return self.gpu_index if self.gpu_index is not None else self.cpu_index

    @property
    def device(self) -> str:
        return "gpu" if self.gpu_index is not None else "cpu"

    @property
    def ntotal(self) -> int:
        return int(self.cpu_index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.cpu_index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [B, k], scores float32 [B, k]), best first; id -1 where the index found fewer than k."""
        q = as_queries(queries, self.dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        idx = self.gpu_index if self.gpu_index is not None and k <= GPU_MAX_K else self.cpu_index
        scores, ids = idx.search(q, k)
        return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the recall/speed knob of an approximate index (recorded in ``info.params``)."""
        if nprobe is not None:
            if self.info.kind != "ivf":
                raise ValueError(f"nprobe applies to ivf indexes, this one is {self.info.kind}")
            nlist = int(faiss.extract_index_ivf(self.cpu_index).nlist)
            if not 1 <= nprobe <= nlist:
                raise ValueError(f"nprobe must be in 1..{nlist}, got {nprobe}")
            faiss.extract_index_ivf(self.cpu_index).nprobe = nprobe
            if self.gpu_index is not None:
                faiss.GpuParameterSpace().set_index_parameter(self.gpu_index, "nprobe", nprobe)
            self.info.params["nprobe"] = nprobe
        if ef_search is not None:
            if self.info.kind != "hnsw":
                raise ValueError(f"ef_search applies to hnsw indexes, this one is {self.info.kind}")
            if ef_search < 1:
                raise ValueError(f"ef_search must be >= 1, got {ef_search}")
            self.cpu_index.hnsw.efSearch = ef_search
            self.info.params["ef_search"] = ef_search


def build_index(
    emb: np.ndarray, kind: str = "exact", *, out_dir: str | os.PathLike[str] | None = None, **params: Any
) -> ItemIndex:
    """Build an inner-product index over ``emb`` [n, d]; with ``out_dir`` also write index.faiss + index.json.

    Params — ivf: ``nlist`` (default 4*sqrt(n), capped at n/39 so k-means has enough points per centroid),
    ``nprobe`` (default nlist/16), ``train_size`` (k-means sample, default min(n, 64*nlist)), ``niter`` (20),
    ``seed``; hnsw: ``M`` (32), ``ef_construction`` (40), ``ef_search`` (128).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    unknown = set(params) - _PARAMS[kind]
    if unknown:
        allowed = ", ".join(sorted(_PARAMS[kind])) or "none"
        names = ", ".join(sorted(unknown))
        raise ValueError(f"unknown parameter(s) {names} for {kind} index (allowed: {allowed})")
    x = as_matrix(emb)
    n, d = x.shape
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        resolved: dict[str, Any] = {}
    elif kind == "ivf":
        index, resolved = _build_ivf(x, **params)
    else:
        m = int(params.get("M", 32))
        resolved = {
            "M": m,
            "ef_construction": int(params.get("ef_construction", 40)),
            "ef_search": int(params.get("ef_search", 128)),
        }
        index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = resolved["ef_construction"]
        index.hnsw.efSearch = resolved["ef_search"]
        index.add(x)
    built = ItemIndex(cpu_index=index, info=IndexInfo(kind=kind, dim=d, count=n, params=resolved))
    if out_dir is not None:
        save_index(built, out_dir)
    return built


def _build_ivf(x: np.ndarray, **params: Any) -> tuple[faiss.Index, dict[str, Any]]:
    n, d = x.shape
    default_nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
    nlist = int(params.get("nlist", default_nlist))
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be in 1..{n} (the number of items), got {nlist}")
    nprobe = int(params.get("nprobe", max(1, nlist // 16)))
    if not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe must be in 1..{nlist}, got {nprobe}")
    train_size = int(params.get("train_size", min(n, 64 * nlist)))
    if not nlist <= train_size <= n:
        raise ValueError(f"train_size must be in {nlist}..{n}, got {train_size}")
    niter = int(params.get("niter", 20))
    seed = int(params.get("seed", 1234))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = niter
    index.cp.seed = seed
    index.cp.max_points_per_centroid = max(256, math.ceil(train_size / nlist))  # we sample ourselves
    index.cp.min_points_per_centroid = 1  # small catalogues: a warning per build would be noise
    rng = np.random.default_rng(seed)
    sample = x if train_size == n else x[np.sort(rng.choice(n, size=train_size, replace=False))]
    index.train(sample)
    index.add(x)
    index.nprobe = nprobe
    resolved = {"nlist": nlist, "nprobe": nprobe, "train_size": train_size, "niter": niter, "seed": seed}
    return index, resolved


def save_index(item_index: ItemIndex, folder: str | os.PathLike[str]) -> Path:
    """Write ``index.faiss`` and ``index.json`` into ``folder`` (each via temp file + rename)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp_index = out / f".{INDEX_FILE}.{tag}.tmp"
    tmp_meta = out / f".{INDEX_META}.{tag}.tmp"
    try:
        faiss.write_index(item_index.cpu_index, str(tmp_index))
        tmp_meta.write_text(json.dumps(asdict(item_index.info), indent=2, sort_keys=True) + "\n")
        os.replace(tmp_index, out / INDEX_FILE)
        os.replace(tmp_meta, out / INDEX_META)
    finally:
        for p in (tmp_index, tmp_meta):
            p.unlink(missing_ok=True)
    return out


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def load_index(folder: str | os.PathLike[str], use_gpu: bool | str = "auto") -> ItemIndex:
    """Load ``index.faiss`` + ``index.json`` from ``folder``, checking one against the other.

    ``use_gpu``: ``"auto"`` moves exact/ivf indexes to GPU 0 when faiss has GPU support and a GPU is present,
    ``True`` requires that (error otherwise), ``False`` stays on the CPU.
    """
    if use_gpu not in ("auto", True, False):
        raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
    src = Path(folder)
    meta_path, index_path = src / INDEX_META, src / INDEX_FILE
    for p in (meta_path, index_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing; build the index with model_store.index.build_index")
    try:
        raw = json.loads(meta_path.read_text())
        info = IndexInfo(**raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{meta_path}: not a valid index description ({exc})") from None
    if info.format != INDEX_FORMAT or info.kind not in KINDS or info.metric != "inner_product":
        what = f"format {info.format}, kind {info.kind}, {info.metric}"
        raise ValueError(f"{meta_path}: unsupported index ({what})")
    # Flat codes memory-mapped (faiss >= 1.8): the worker processes of one host share one copy of the vectors.
    index = faiss.read_index(str(index_path), getattr(faiss, "IO_FLAG_MMAP_IFC", 0))
    if index.ntotal != info.count or index.d != info.dim:
        raise ValueError(
            f"{index_path} holds {index.ntotal} x {index.d} vectors "
            f"but {INDEX_META} says {info.count} x {info.dim}"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"{index_path} is not an inner-product index")
    item_index = ItemIndex(cpu_index=index, info=info)
    # The search knobs are not part of the faiss file's contract; index.json is where they are recorded.
    if info.kind == "ivf" and "nprobe" in info.params:
        faiss.extract_index_ivf(index).nprobe = int(info.params["nprobe"])
    elif info.kind == "hnsw" and "ef_search" in info.params:
        index.hnsw.efSearch = int(info.params["ef_search"])

    want_gpu = use_gpu is True or (use_gpu == "auto" and info.kind in GPU_KINDS and gpu_available())
    if want_gpu:
        if not gpu_available():
            raise RuntimeError("use_gpu=True but this faiss build has no GPU support or no GPU is visible")
        if info.kind not in GPU_KINDS:
            raise RuntimeError(f"faiss cannot run a {info.kind} index on the GPU; use exact or ivf")
        res = faiss.StandardGpuResources()
        item_index.gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
        item_index._gpu_res = res
    return item_index


def measure_recall(
    approx: ItemIndex | faiss.Index, exact: ItemIndex | faiss.Index, queries: np.ndarray, k: int = 100
) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| (recall@k against exact search)."""
    q = as_matrix(queries)
    _, a = search_any(approx, q, k)
    _, e = search_any(exact, q, k)
    total = 0.0
    for ra, re_ in zip(a, e, strict=True):
        truth = re_[re_ >= 0]
        if truth.size:
            total += np.intersect1d(ra[ra >= 0], truth).size / truth.size
    return total / len(q)


def search_any(index: ItemIndex | faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(index, ItemIndex):
        ids, scores = index.search(q, k)
        return scores, ids
    scores, ids = index.search(q, k)
    return scores, ids


def as_matrix(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected a non-empty 2-D array [n, d], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"expected numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("embeddings/queries contain NaN or inf")
    return arr


def as_queries(x: np.ndarray, dim: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    arr = as_matrix(arr)
    if arr.shape[1] != dim:
        raise ValueError(f"query dimension {arr.shape[1]} does not match the index dimension {dim}")
    return arr

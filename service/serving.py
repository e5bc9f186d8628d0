"""A loaded model version (everything one request needs, immutable) and the holder that hot-swaps it.

Hot swap: the new version is loaded, verified and warmed up completely off the event loop, then
``holder.current`` is replaced in one assignment. A request reads ``holder.current`` once at its start and
uses that object to the end, so in-flight requests finish on the old version; the old version's micro-batcher
drains and is garbage-collected."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphprompt.graph import BipartiteGraph
from graphprompt.prompts import PromptBuilder, PromptConfig
from graphprompt.tokenizer import RecTokenizer
from model_store import ModelStore, VersionHandle
from model_store.index import Ranker
from service.batcher import MicroBatcher
from service.config import Settings

log = logging.getLogger("edgerec.serving")


def _load_encoder(handle: VersionHandle, settings: Settings) -> Any:
    """ONNX Runtime when the version has encoder.onnx (CUDA provider first when present), else torch."""
    from graphprompt import encoder as enc

    want = settings.encoder
    onnx_name = enc.ONNX_INT8_FILE if settings.encoder_int8 else enc.ONNX_FILE
    if want in ("auto", "onnx") and handle.has(onnx_name):
        providers = ["CPUExecutionProvider"] if settings.use_gpu == "no" else enc.default_providers()
        threads = settings.encoder_threads or None
        return enc.OnnxEncoder(handle.file(onnx_name), providers=providers, intra_op_threads=threads)
    if want == "onnx":
        raise FileNotFoundError(f"version {handle.version} has no {onnx_name} and EDGEREC_ENCODER=onnx")
    # The torch fallback (torch imported lazily); the manifest lookups name any missing file.
    handle.file(enc.TORCH_WEIGHTS_FILE)
    handle.file(enc.MODEL_CONFIG_FILE)
    import torch

    if settings.encoder_threads:
        torch.set_num_threads(settings.encoder_threads)
    device = "cuda" if settings.use_gpu != "no" and torch.cuda.is_available() else "cpu"
    return enc.TorchEncoder(handle.path, device=device)


def set_search_threads(n: int) -> None:
    """FAISS's OpenMP thread count for searches made by the calling thread (0: leave the library default).

    OpenMP keeps this per thread: a thread that never set it searches with one thread per core, and on a small
    machine those extra threads spin against the event loop. So every thread that searches calls this (the
    micro-batch thread does at its start), not just the one that loaded the model."""
    if n:
        import faiss

        faiss.omp_set_num_threads(n)


@dataclass(eq=False)
class ServingModel:
    version: str
    created_at: str
    metrics: dict[str, Any]
    dataset_fingerprint: str | None
    graph: BipartiteGraph
    builder: PromptBuilder
    encoder: Any
    ranker: Ranker
    user_ids: list[str]
    item_ids: list[str]
    items: list[dict[str, Any]]
    popularity: np.ndarray
    loaded_at: float = field(default_factory=time.time)
    batcher: MicroBatcher | None = None  # set by the recommender, which owns the batch function
    user_index: dict[str, int] = field(init=False)
    item_index: dict[str, int] = field(init=False)
    popular_order: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i for i, it in enumerate(self.item_ids)}
        # Stable sort: equal counts keep item order, so the popularity fallback is deterministic.
        self.popular_order = np.argsort(-np.asarray(self.popularity, dtype=np.float64), kind="stable")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "metrics": self.metrics,
            "dataset_fingerprint": self.dataset_fingerprint,
            "n_users": len(self.user_ids),
            "n_items": self.n_items,
            "encoder": type(self.encoder).__name__,
            "encoder_providers": list(getattr(self.encoder, "providers", [])),
            "index": getattr(getattr(self.ranker.index, "info", None), "kind", "faiss"),
            "index_device": getattr(self.ranker.index, "device", "cpu"),
            "loaded_at": self.loaded_at,
        }

    def retire(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def load_serving_model(settings: Settings, version: str | None = None) -> ServingModel:
    """Open (and verify) ``version`` (default: the pinned or promoted one) and load every part of it."""
    t0 = time.perf_counter()
    store = ModelStore(settings.store_root)
    handle = store.open_version(version or settings.model_version or None, verify=True)
    m = handle.manifest

    graph = BipartiteGraph.load(handle.path / "graph")
    cfg = PromptConfig.from_saved(handle.load_json("prompt_config.json"))
    handle.file("tokenizer.json")
    tok = RecTokenizer.load(handle.path, counts=cfg.tokenizer)
    builder = PromptBuilder(tok, graph, cfg)
    encoder = _load_encoder(handle, settings)
    item_emb = np.ascontiguousarray(handle.load_npy("item_embeddings.npy", mmap=False), dtype=np.float32)
    set_search_threads(settings.search_threads)  # for the warm-up below, which runs in this thread
    index = handle.load_index(use_gpu={"auto": "auto", "yes": True, "no": False}[settings.use_gpu])
    ranker = Ranker(index, item_emb)
    user_ids = [str(u) for u in handle.load_json("user_ids.json")]
    item_ids = [str(i) for i in handle.load_json("item_ids.json")]
    items = handle.load_json("items.json")
    popularity = np.asarray(handle.load_npy("popularity.npy", mmap=False), dtype=np.float32)

    n_items = graph.n_items
    checks = {
        "item_ids.json": len(item_ids),
        "items.json": len(items),
        "popularity.npy": len(popularity),
        "item_embeddings.npy": item_emb.shape[0],
        "index.faiss": ranker.n_items,
    }
    bad = {name: n for name, n in checks.items() if n != n_items}
    if bad or len(user_ids) != graph.n_users:
        raise ValueError(
            f"version {handle.version} is inconsistent: graph has {graph.n_users} users / {n_items} items, "
            f"but {bad or {'user_ids.json': len(user_ids)}}"
        )
    if encoder.dim != ranker.dim:
        raise ValueError(f"encoder dim {encoder.dim} != item embedding dim {ranker.dim}")

    model = ServingModel(
        version=handle.version,
        created_at=m.created_at,
        metrics=m.metrics.model_dump(),
        dataset_fingerprint=m.dataset_fingerprint,
        graph=graph,
        builder=builder,
        encoder=encoder,
        ranker=ranker,
        user_ids=user_ids,
        item_ids=item_ids,
        items=items,
        popularity=popularity,
    )
    _warm_up(model)
    log.info(
        "model loaded",
        extra={"version": model.version, "seconds": round(time.perf_counter() - t0, 3), **model.describe()},
    )
    return model


def _warm_up(model: ServingModel) -> None:
    """One real forward pass and search, so a broken version fails here (before any swap) and the first
    request does not pay for lazy initialisation."""
    hist = model.graph.user_items(0)[:5] if model.graph.n_users else model.popular_order[:5]
    prompt = model.builder.predictive(None, np.asarray(hist, dtype=np.int64), None)
    vec = model.encoder.encode(*PromptBuilder.collate([prompt]))
    if vec.shape != (1, model.ranker.dim) or not np.isfinite(vec).all():
        raise ValueError(f"encoder warm-up returned shape {vec.shape} or non-finite values")
    model.ranker.search(vec, min(10, model.n_items))


class ModelHolder:
    """The one reference to the served model; swapped atomically."""

    def __init__(self) -> None:
        self.current: ServingModel | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()

    async def reload(
        self, settings: Settings, version: str | None = None, *, prepare=None
    ) -> tuple[str | None, str]:
        """Load ``version`` (default: promoted) fully, then swap. Returns (old version, new version).

        ``prepare(model)`` attaches request-path state (the batcher) before the model becomes visible.
        Concurrent reloads are serialised; loading the version already served is a no-op.
        """
        async with self._lock:
            ref = version or settings.model_version or "current"
            target = await asyncio.to_thread(ModelStore(settings.store_root).resolve, ref)
            old = self.current
            if old is not None and old.version == target:
                return old.version, old.version
            new = await asyncio.to_thread(load_serving_model, settings, target)
            if prepare is not None:
                prepare(new)
            self.current = new  # the atomic swap: one reference assignment
            self.last_error = None
            if old is not None:
                old.retire()
            return (old.version if old else None), new.version

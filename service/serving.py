"""A loaded model version (everything one request needs, immutable) and the holder that hot-swaps it.

Hot swap: the new version is loaded, verified and warmed up completely off the event loop, then
``holder.current`` is replaced in one assignment. A request reads ``holder.current`` once at its start and
uses that object to the end, so in-flight requests finish on the old version; the old version's micro-batcher
drains and is garbage-collected."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.version import EncoderChoice, InferenceVersion, open_version
from model_store import ModelStore
from service.batcher import MicroBatcher
from service.config import REASON_CACHE_SIZE, Settings
from service.explain import PairCounts, ReasonCache

if TYPE_CHECKING:
    from service.catalogue import CatalogueView

log = logging.getLogger("edgerec.serving")


def set_search_threads(n: int) -> None:
    """FAISS's OpenMP thread count for searches made by the calling thread (0: leave the library default).

    OpenMP keeps this per thread: a thread that never set it searches with one thread per core, and on a small
    machine those extra threads spin against the event loop. So every thread that searches calls this (the
    micro-batch thread does at its start), not just the one that loaded the model."""
    if n:
        import faiss

        faiss.omp_set_num_threads(n)


@dataclass(eq=False, kw_only=True)
class ServingModel(InferenceVersion):
    """An opened version (the inference core's) plus what serving adds: store metadata, id lookups, the
    popularity order for the fallback, and the micro-batcher."""

    version: str
    created_at: str
    metrics: dict[str, Any]
    dataset_fingerprint: str | None
    loaded_at: float = field(default_factory=time.time)
    batcher: MicroBatcher | None = None  # set by the recommender, which owns the batch function
    catalogue: CatalogueView | None = None  # set by service.catalogue before it serves, replaced on changes
    user_index: dict[str, int] = field(init=False)
    item_index: dict[str, int] = field(init=False)
    popular_order: np.ndarray = field(init=False)
    reason_cache_size: int = REASON_CACHE_SIZE  # EDGEREC_REASON_CACHE_SIZE
    reason_cache: ReasonCache = field(init=False)  # explain: true answers of this version's graph
    pairs: PairCounts | None = field(init=False)  # the graph's co-occurrence counts, for explain: true

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i for i, it in enumerate(self.item_ids)}
        # Stable sort: equal counts keep item order, so the popularity fallback is deterministic.
        self.popular_order = np.argsort(-np.asarray(self.popularity, dtype=np.float64), kind="stable")
        self.reason_cache = ReasonCache(self.reason_cache_size)
        # built here, in the loading thread: a first explaining request must not stall the event loop
        self.pairs = PairCounts.build(self.graph)

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


def encoder_choice(settings: Settings) -> EncoderChoice:
    return EncoderChoice(
        prefer=settings.encoder,
        int8=settings.encoder_int8,
        use_gpu=settings.use_gpu,
        threads=settings.encoder_threads or None,
    )


def load_serving_model(settings: Settings, version: str) -> ServingModel:
    """Open (and verify) ``version`` from the store, load every part through the inference core, check it."""
    t0 = time.perf_counter()
    handle = ModelStore(settings.store_root).open_version(version, verify=True)
    m = handle.manifest
    set_search_threads(settings.search_threads)  # for the check below, which searches in this thread
    core = open_version(handle.path, encoder_choice(settings))
    model = ServingModel(
        **{f.name: getattr(core, f.name) for f in fields(InferenceVersion)},
        version=handle.version,
        created_at=m.created_at,
        metrics=m.metrics.model_dump(),
        dataset_fingerprint=m.dataset_fingerprint,
        reason_cache_size=settings.reason_cache_size,
    )
    model.check()
    log.info(
        "model loaded",
        extra={"version": model.version, "seconds": round(time.perf_counter() - t0, 3), **model.describe()},
    )
    return model


class ModelHolder:
    """The one reference to the served model, swapped atomically, and which version it should be.

    ``pinned`` is the version an operator asked for (``EDGEREC_MODEL_VERSION`` or ``POST /admin/reload``
    with a version); while it is set the store poller does not follow promotions. ``last_error`` is the
    last failed load, kept until a load succeeds."""

    def __init__(self, pinned: str | None = None) -> None:
        self.current: ServingModel | None = None
        self.pinned = pinned
        self.last_error: str | None = None
        self.loading: str | None = None
        self._lock = asyncio.Lock()

    @property
    def version(self) -> str | None:
        return self.current.version if self.current is not None else None

    async def swap_to(
        self, settings: Settings, ref: str, *, prepare=None, before_swap=None
    ) -> tuple[str | None, str]:
        """Load ``ref`` (a version id or alias) fully, then swap. Returns (old version, new version).

        ``await prepare(model)`` attaches request-path state (the batcher, the catalogue view) before the
        model becomes visible.
        Concurrent loads are serialised; loading the version already served is a no-op."""
        async with self._lock:
            target = await asyncio.to_thread(ModelStore(settings.store_root).resolve, ref)
            self.loading = target  # what an error during the load is about
            old = self.current
            if old is not None and old.version == target:
                return old.version, old.version
            new = await asyncio.to_thread(load_serving_model, settings, target)
            if prepare is not None:
                await prepare(new)
            if before_swap is not None and old is not None:
                await before_swap(new)  # e.g. warm the recent users' cache entries; the old version serves
            self.current = new  # the atomic swap: one reference assignment
            if old is not None:
                old.retire()
            return (old.version if old else None), new.version

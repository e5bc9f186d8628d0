"""Which version serves: one ``load_current`` for start-up, the store poller and ``POST /admin/reload``.

- Start-up loads ``EDGEREC_MODEL_VERSION`` when set (pinned), else the store's ``CURRENT``.
- The poller follows ``CURRENT`` (a promotion is picked up within ``EDGEREC_MODEL_POLL_S``) unless a version
  is pinned.
- ``POST /admin/reload {"version": V}`` loads V and pins it until ``POST /admin/reload`` without a version,
  which unpins and loads ``CURRENT`` (or the configured pin) again.

A failed load never touches the served model: the failure is logged as "kept serving V", shown in
``/readyz``'s detail and counted in ``edgerec_model_reloads_total{outcome="failed"}`` and
``edgerec_model_load_failing``."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass

from model_store import ModelStore, ModelStoreError, NoCurrentVersion
from service.background import cancelled
from service.state import AppState
from service.warmer import start_warming

log = logging.getLogger("edgerec.models")

UNPIN = object()  # load_current(state, UNPIN): clear a run-time pin


@dataclass
class SwapResult:
    previous: str | None
    version: str
    pinned: str | None

    @property
    def changed(self) -> bool:
        return self.previous != self.version


class LoadFailed(Exception):
    """The requested version did not load; ``served`` (if any) keeps serving."""

    def __init__(self, ref: str, served: str | None, cause: BaseException) -> None:
        self.ref, self.served, self.cause = ref, served, cause
        kept = f"kept serving {served}" if served else "no model is served"
        super().__init__(f"loading {ref} failed ({type(cause).__name__}: {cause}); {kept}")


async def load_current(state: AppState, version: str | None | object = None) -> SwapResult:
    """Load the version that should serve and swap it in (a no-op when it already serves).

    ``version``: None follows the pin or ``CURRENT``; a version id/alias loads and pins it; ``UNPIN``
    clears a pin set at run time (back to the configured one, else ``CURRENT``). Raises LoadFailed."""
    holder, settings, metrics = state.holder, state.settings, state.metrics
    if version is UNPIN:
        holder.pinned = settings.model_version
        ref = holder.pinned or "current"
    elif version is not None:
        ref = str(version)
    else:
        ref = holder.pinned or "current"
    holder.loading = None
    try:
        rec = state.recommender
        old, new = await holder.swap_to(
            settings,
            ref,
            prepare=lambda model: _prepare(state, model),
            before_swap=lambda model: rec.swap_warmup.warm(rec, model),
        )
    except NoCurrentVersion as exc:  # nothing promoted yet: the normal state of a new deployment
        log.info("no model version promoted yet", extra={"store": str(settings.store_root)})
        raise LoadFailed(ref, holder.version, exc) from exc
    except (ModelStoreError, OSError, ValueError, RuntimeError) as exc:
        failure = LoadFailed(holder.loading or ref, holder.version, exc)
        holder.last_error = str(failure)
        metrics.reloads.labels("failed").inc()
        metrics.load_failing.set(1)
        log.warning("model load failed", extra={"error": str(failure), "served": holder.version})
        raise failure from exc
    if version is not None and version is not UNPIN:
        holder.pinned = new
    holder.last_error = None
    metrics.load_failing.set(0)
    if old != new:
        _freeze_heap()
        metrics.reloads.labels("ok").inc()
        metrics.set_model(new)
        log.info("serving model", extra={"version": new, "previous": old, "pinned": holder.pinned})
        start_warming(state)
    else:
        metrics.reloads.labels("unchanged").inc()
    return SwapResult(old, new, holder.pinned)


async def _prepare(state: AppState, model) -> None:
    """What a version needs before it takes traffic: its micro-batcher and its catalogue view."""
    state.recommender.attach(model)
    if state.catalogue is not None:
        await state.catalogue.prepare(model)


def _freeze_heap() -> None:
    """Move everything alive now (the loaded model: catalogue dicts, id maps, graph) out of the cyclic GC's
    reach. Otherwise every full collection walks those millions of objects on the event loop: ~50 ms pauses
    about once a second under load, which were most of the p99. Unfreezing first lets a swapped-out model's
    cycles be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def poll_store(state: AppState, every_s: float) -> None:
    """Follow the store's CURRENT pointer while nothing is pinned."""
    failed: str | None = None  # a version that failed to load is not retried until CURRENT moves on
    store = ModelStore(state.settings.store_root)
    while not cancelled():  # not only the exception: redis-py can swallow it (service/background.py)
        await asyncio.sleep(every_s)
        if state.holder.pinned is not None:
            continue
        try:
            target = await asyncio.to_thread(store.current)
        except ModelStoreError:
            continue
        if target in (state.holder.version, failed):
            continue
        try:
            await load_current(state)
            failed = None
        except LoadFailed:
            failed = target

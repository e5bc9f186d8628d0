"""``create_app(settings)`` builds the FastAPI app; its lifespan connects Redis and loads the served model."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_store import ModelStore, ModelStoreError
from service.api.routes import admin, health, interactions, items, metrics, model, recommend
from service.cache import Cache
from service.config import Settings
from service.logging import configure_logging, request_id_var
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.recommender import Recommender
from service.redis_conn import open_redis
from service.serving import ModelHolder
from service.state import AppState
from service.warmer import start_warming

log = logging.getLogger("edgerec.service")


def _redis_state(m: Metrics, ok: bool) -> None:
    m.redis_up.set(1 if ok else 0)
    if not ok:
        m.errors.labels("redis").inc()


async def _load_current(state: AppState) -> None:
    """Load the pinned/promoted version if it is not the served one; a failure leaves the old one serving."""
    try:
        old, new = await state.holder.reload(state.settings, prepare=state.recommender.attach)
    except (ModelStoreError, OSError, ValueError, RuntimeError) as exc:
        state.holder.last_error = f"{type(exc).__name__}: {exc}"
        state.metrics.reloads.labels("failed").inc()
        log.warning("no model loaded", extra={"error": state.holder.last_error})
        return
    if old != new:
        _freeze_heap()
        state.metrics.reloads.labels("ok").inc()
        state.metrics.set_model(new)
        log.info("serving model", extra={"version": new, "previous": old})
        start_warming(state)


def _freeze_heap() -> None:
    """Move everything alive now (the loaded model: catalogue dicts, id maps, graph) out of the cyclic GC's
    reach. Otherwise every full collection walks those millions of objects on the event loop: ~50 ms pauses
    about once a second under load, which were most of the p99. Unfreezing first lets a swapped-out model's
    cycles be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _poll_store(state: AppState, every_s: float) -> None:
    """Follow the store's CURRENT pointer, so a promotion is picked up without an admin call."""
    failed: str | None = None  # a version that failed to load is not retried until CURRENT moves on
    store = ModelStore(state.settings.store_root)
    while True:
        await asyncio.sleep(every_s)
        try:
            target = await asyncio.to_thread(store.current)
        except ModelStoreError:
            continue
        served = state.holder.current.version if state.holder.current else None
        if target in (served, failed):
            continue
        await _load_current(state)
        served = state.holder.current.version if state.holder.current else None
        failed = None if served == target else target


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    m: Metrics = app.state.metrics
    # The micro-batch thread drops the GIL around every encoder/FAISS call and must win it back from the event
    # loop; with the default 5 ms switch interval each hand-back can stall a whole batch by 5 ms.
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000.0)
    redis = await asyncio.to_thread(
        open_redis, settings.redis_url, settings.redis_timeout_s, settings.redis_dir
    )
    cache = Cache(
        redis.client,
        settings.redis_prefix,
        ttl_s=settings.cache_ttl_s,
        history_max=settings.history_max,
        stream_maxlen=settings.stream_maxlen,
        timeout_s=settings.redis_timeout_s,
        backoff_max_s=settings.redis_backoff_max_s,
        on_state=lambda ok: _redis_state(m, ok),
    )
    state = AppState(settings, m, redis, cache, ModelHolder(), Recommender(cache, m, settings))
    app.state.edgerec = state
    await cache.ping()
    await _load_current(state)
    poller = None
    if settings.model_poll_s > 0 and settings.model_version is None:
        poller = asyncio.create_task(_poll_store(state, settings.model_poll_s))
    try:
        yield
    finally:
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if state.warm_task is not None:
            state.warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.warm_task
        if state.holder.current is not None:
            state.holder.current.retire()
        await redis.close()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.detail, "request_id": request_id_var.get()},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
    return JSONResponse({"detail": errors, "request_id": request_id_var.get()}, status_code=422)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)
    app = FastAPI(
        title="edgerec",
        version="0.1.0",
        summary="Graph-attentive GPT-2 recommendations over HTTP.",
        description="Errors are JSON `{detail, request_id}`; every response carries `X-Request-ID`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    for r in (recommend, interactions, items, model, health, metrics, admin):
        app.include_router(r.router)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app.state.metrics,
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )
    return app

"""``create_app(settings)`` builds the FastAPI app; its lifespan connects Redis and loads the served model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.errors import error_response, http_error, validation_error
from service.api.routes import admin, health, interactions, items, metrics, model, recommend
from service.background import stop
from service.cache import Cache
from service.catalogue import Catalogue
from service.config import Settings
from service.logging import configure_logging
from service.metrics import RETRAIN_STATUS_FILE, Metrics
from service.middleware import RequestContextMiddleware
from service.model_control import LoadFailed, load_current, poll_store
from service.prompt_pool import PromptPoolFull
from service.recommender import Recommender
from service.redis_conn import open_redis
from service.serving import ModelHolder
from service.state import AppState

log = logging.getLogger("edgerec.service")


def _redis_state(m: Metrics, ok: bool) -> None:
    m.redis_up.set(1 if ok else 0)
    if not ok:
        m.errors.labels("redis").inc()


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
        stream_shards=settings.stream_shards,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )
    holder = ModelHolder(pinned=settings.model_version)
    state = AppState(settings, m, redis, cache, holder, Recommender(cache, m, settings))
    state.catalogue = Catalogue(
        redis.client, settings.redis_prefix, lambda: holder.current, timeout_s=settings.redis_timeout_s
    )
    m.catalogue_view = lambda: holder.current.catalogue if holder.current is not None else None
    m.reason_cache = lambda: holder.current.reason_cache if holder.current is not None else None
    app.state.edgerec = state
    await cache.ping()
    with contextlib.suppress(LoadFailed):  # logged; /readyz says why until a load succeeds
        await load_current(state)
    tasks = [asyncio.create_task(state.catalogue.poll(settings.catalogue_refresh_ms / 1000.0))]
    if settings.model_poll_s > 0:
        tasks.append(asyncio.create_task(poll_store(state, settings.model_poll_s)))
    try:
        yield
    finally:
        await stop([*tasks, state.warm_task])
        if state.holder.current is not None:
            state.holder.current.retire()
        state.recommender.close()
        await redis.close()
        m.process_exiting()


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
    # /metrics also reports the last retrain, from the record `edgerec retrain` leaves in the store
    app.state.metrics = Metrics(retrain_status=settings.store_root / RETRAIN_STATUS_FILE)
    for r in (recommend, interactions, items, model, health, metrics, admin):
        app.include_router(r.router)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)

    async def prompt_pool_full(request, exc: PromptPoolFull):  # overload shedding (service/prompt_pool.py)
        return error_response(503, f"{exc}; retry later", {"Retry-After": str(settings.retry_after_s)})

    app.add_exception_handler(PromptPoolFull, prompt_pool_full)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app.state.metrics,
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )
    return app

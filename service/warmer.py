"""Cache warming: after a version is loaded, fill every known user's cache entry (neighbourhood, hop
distances, user vector) in the background, so first requests are as cheap as repeat ones.

Off by default (``EDGEREC_WARM_CACHE``): it costs ~5-10 ms of CPU per user (22k users: 2-4 CPU-minutes on
the 2-core reference machine) while serving. One replica per version does it (a Redis lock), entries expire
with the usual TTL, and the warmer stops as soon as another version is swapped in. It runs the ordinary
request path (k=1, results discarded), so warmed entries are exactly what a request would have cached."""

from __future__ import annotations

import asyncio
import logging
import time

from service.background import cancelled
from service.cache import RedisUnavailable
from service.serving import ServingModel
from service.state import AppState

log = logging.getLogger("edgerec.warmer")


async def warm_cache(state: AppState, model: ServingModel) -> None:
    settings, metrics = state.settings, state.metrics
    metrics.warm_progress.set(0)
    try:
        mine = await state.cache.try_lock(f"{model.version}:warm", ttl_s=settings.cache_ttl_s)
    except RedisUnavailable:
        log.warning("cache warming skipped: Redis unavailable")
        return
    if not mine:
        log.info("cache warming left to the replica that holds the lock", extra={"version": model.version})
        return
    users, step = model.user_ids, settings.warm_concurrency
    t0 = time.perf_counter()
    for start in range(0, len(users), step):
        if cancelled():  # a redis call may have swallowed the CancelledError (service/background.py)
            return
        if state.holder.current is not model:
            log.info("cache warming stopped: another version is served", extra={"version": model.version})
            return
        chunk = users[start : start + step]
        await asyncio.gather(
            *(state.recommender.recommend(model, u, k=1, record=False) for u in chunk), return_exceptions=True
        )
        metrics.warm_progress.set(min(1.0, (start + len(chunk)) / len(users)))
    log.info(
        "cache warmed",
        extra={"version": model.version, "users": len(users), "seconds": round(time.perf_counter() - t0, 1)},
    )


def start_warming(state: AppState) -> None:
    """Warm the served version's cache in the background (replacing a warm-up of an older version)."""
    model = state.holder.current
    if not state.settings.warm_cache or model is None:
        return
    if state.warm_task is not None:
        state.warm_task.cancel()
    state.warm_task = asyncio.get_running_loop().create_task(warm_cache(state, model))

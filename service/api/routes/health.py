"""Liveness and readiness.

Readiness means "a verified model is loaded". Redis being down does NOT make the pod unready: recommendations
keep working from the in-memory graph snapshot (flagged ``cache_unavailable``), and marking every replica
unready when the shared Redis blips would turn a degraded service into an outage. The body reports the cache
state; interaction writes answer 503 + Retry-After meanwhile, and Redis health belongs to Redis's own probes
and alerts (edgerec_redis_up)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service.api.deps import ProbeKey, StateDep
from service.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"], dependencies=[ProbeKey])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Liveness: the process serves HTTP."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(state: StateDep, response: Response) -> ReadyResponse:
    """Readiness: 200 once a verified model is loaded (whether or not Redis is reachable)."""
    model = state.holder.current
    cache_ok = await state.cache.ping()
    if model is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return ReadyResponse(
            ready=False,
            model_version=None,
            cache="ok" if cache_ok else "unavailable",
            detail=state.holder.last_error
            or f"no model loaded: no version is promoted in the model store ({state.settings.store_root})",
        )
    # Ready, but say so when a newer load failed and this version kept serving, or a version is pinned.
    detail = state.holder.last_error
    if state.holder.pinned:
        detail = (detail + "; " if detail else "") + f"pinned to {state.holder.pinned}"
    return ReadyResponse(
        ready=True, model_version=model.version, cache="ok" if cache_ok else "unavailable", detail=detail
    )

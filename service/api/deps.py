"""FastAPI dependencies, declared once as ``Annotated`` types that routes take as parameters.

All are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, and a handful of
thread hops per request would cost more than the whole recommendation on a 2-core machine."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from service.cache import Cache
from service.config import Settings
from service.metrics import Metrics
from service.recommender import Recommender
from service.serving import ServingModel
from service.state import AppState

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (when configured).")


async def get_state(request: Request) -> AppState:
    return request.app.state.edgerec


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


async def get_cache(state: StateDep) -> Cache:
    return state.cache


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


async def get_recommender(state: StateDep) -> Recommender:
    return state.recommender


async def get_model(state: StateDep) -> ServingModel:
    """The model at the start of the request; the request keeps it even if a hot swap happens meanwhile."""
    model = state.holder.current
    if model is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="no model loaded yet: promote a version (edgerec models promote) and POST /admin/reload",
            headers={"Retry-After": "5"},
        )
    return model


SettingsDep = Annotated[Settings, Depends(get_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
ModelDep = Annotated[ServingModel, Depends(get_model)]


def _check(expected: str, given: str | None, what: str) -> None:
    if given is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail=f"missing X-API-Key header ({what} required)"
        )
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"wrong {what}")


async def require_api_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)] = None
) -> None:
    if settings.api_key is not None:
        _check(settings.api_key.get_secret_value(), key, "API key")


async def require_probe_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)] = None
) -> None:
    if settings.api_key is not None and not settings.auth_exempt_probes:
        _check(settings.api_key.get_secret_value(), key, "API key")


async def require_metrics_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)] = None
) -> None:
    if settings.api_key is not None and not settings.auth_exempt_metrics:
        _check(settings.api_key.get_secret_value(), key, "API key")


async def require_admin_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)] = None
) -> None:
    if settings.admin_api_key is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="admin API disabled: set EDGEREC_ADMIN_API_KEY")
    _check(settings.admin_api_key.get_secret_value(), key, "admin key")


ApiKey = Depends(require_api_key)
ProbeKey = Depends(require_probe_key)
MetricsKey = Depends(require_metrics_key)
AdminKey = Depends(require_admin_key)

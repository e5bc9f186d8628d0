"""FastAPI dependencies, declared once as ``Annotated`` types that routes take as parameters.

All are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, and a handful of
thread hops per request would cost more than the whole recommendation on a 2-core machine."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from service.cache import Cache
from service.catalogue import Catalogue
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


async def get_catalogue(state: StateDep) -> Catalogue:
    return state.catalogue


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


async def get_recommender(state: StateDep) -> Recommender:
    return state.recommender


async def get_model(state: StateDep) -> ServingModel:
    """The model at the start of the request; the request keeps it even if a hot swap happens meanwhile."""
    model = state.holder.current
    if model is None:
        settings = state.settings
        store = f"no version is promoted in the model store ({settings.store_root})"
        why = state.holder.last_error or store
        follow = (
            f"the service checks the store every {settings.model_poll_s:g} s and loads a promoted version "
            "by itself (`edgerec export RUN --promote` or `edgerec models promote VERSION`)"
            if settings.model_poll_s > 0
            else "the store poller is off (EDGEREC_MODEL_POLL_S=0): restart the service after promoting, "
            "or POST /admin/reload (needs EDGEREC_ADMIN_API_KEY)"
        )
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no model loaded yet: {why}; {follow}",
            headers={"Retry-After": "5"},
        )
    return model


SettingsDep = Annotated[Settings, Depends(get_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
CatalogueDep = Annotated[Catalogue, Depends(get_catalogue)]
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


_AUTH_CHECKS = {
    require_api_key: lambda s: s.api_key is not None,
    require_probe_key: lambda s: s.api_key is not None and not s.auth_exempt_probes,
    require_metrics_key: lambda s: s.api_key is not None and not s.auth_exempt_metrics,
}


def _auth_calls(dependant) -> list:
    calls = [dependant.call] if dependant.call in (*_AUTH_CHECKS, require_admin_key) else []
    for sub in dependant.dependencies:
        calls += _auth_calls(sub)
    return calls


async def auth_error(request: Request) -> HTTPException | None:
    """The 401/403 a request would get from its route's key check, or None.

    FastAPI parses a JSON body before it runs any dependency, so a malformed body would be answered 422 before
    the key is checked; the 422 handler asks this first, so an unauthenticated caller learns nothing about
    the body's rules and always gets the 401."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    settings: Settings = request.app.state.settings
    given = request.headers.get("x-api-key")
    for call in _auth_calls(dependant):
        try:
            if call is require_admin_key:
                await require_admin_key(settings, given)
            elif _AUTH_CHECKS[call](settings):
                _check(settings.api_key.get_secret_value(), given, "API key")
        except HTTPException as exc:
            return exc
    return None

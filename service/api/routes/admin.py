"""POST /admin/reload: hot swap to the promoted (or a named) version. Admin key required."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status

from model_store import ModelStoreError, NoPreviousVersion, VersionNotFound
from service.api.deps import AdminKey, StateDep
from service.schemas import ErrorResponse, ReloadRequest, ReloadResponse
from service.warmer import start_warming

router = APIRouter(tags=["admin"], dependencies=[AdminKey])
log = logging.getLogger("edgerec.admin")


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        404: {"model": ErrorResponse, "description": "No such version"},
        409: {"model": ErrorResponse, "description": "The version failed to load; the old one keeps serving"},
    },
)
async def reload_model(state: StateDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load the version fully (verify, warm up), then swap it in atomically; in-flight requests finish on the
    old one. A version that fails to load leaves the served one untouched."""
    version = body.version if body else None
    try:
        old, new = await state.holder.reload(state.settings, version, prepare=state.recommender.attach)
    except ModelStoreError as exc:
        state.metrics.reloads.labels("failed").inc()
        missing = isinstance(exc, VersionNotFound | NoPreviousVersion)
        code = status.HTTP_404_NOT_FOUND if missing else status.HTTP_409_CONFLICT
        raise HTTPException(code, detail=f"reload failed: {exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        state.metrics.reloads.labels("failed").inc()
        log.exception("reload failed")
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"reload failed: {type(exc).__name__}: {exc}"
        ) from None
    state.metrics.reloads.labels("ok" if old != new else "unchanged").inc()
    state.metrics.set_model(new)
    if old != new:
        start_warming(state)
    return ReloadResponse(previous_version=old, version=new, changed=old != new)

"""POST /admin/reload: hot swap to the promoted version, or pin a named one. Admin key required."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from model_store import NoPreviousVersion, VersionNotFound
from service.api.deps import AdminKey, StateDep
from service.model_control import UNPIN, LoadFailed, load_current
from service.schemas import ErrorResponse, ReloadRequest, ReloadResponse

router = APIRouter(tags=["admin"], dependencies=[AdminKey])


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
    """With a ``version``: load it and **pin** it (the store poller stops following promotions). Without
    one: unpin and load the promoted version (``CURRENT``, or ``EDGEREC_MODEL_VERSION`` when configured).

    The version is loaded fully (verified, checked) before the atomic swap; in-flight requests finish on the
    old one. A version that fails to load leaves the served one untouched, and the answer says which
    version kept serving."""
    version = body.version if body and body.version else None
    try:
        result = await load_current(state, version if version is not None else UNPIN)
    except LoadFailed as exc:
        missing = isinstance(exc.cause, VersionNotFound | NoPreviousVersion)
        code = status.HTTP_404_NOT_FOUND if missing else status.HTTP_409_CONFLICT
        raise HTTPException(code, detail=f"reload failed: {exc}") from None
    return ReloadResponse(
        previous_version=result.previous,
        version=result.version,
        changed=result.changed,
        pinned=result.pinned is not None,
    )

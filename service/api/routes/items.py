"""GET /items/{item_id} (API key); PUT and DELETE /items/{item_id}: the catalogue (admin key).

A write is acknowledged only once Redis stored it (one atomic script: the record and the catalogue's sequence
number); this process then rebuilds its view before answering, so a new item is recommendable (and a withdrawn
one gone) here at once and on other replicas within ``EDGEREC_CATALOGUE_REFRESH_MS``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response, status
from redis.exceptions import RedisError

from service.api.common import ERRORS
from service.api.deps import AdminKey, ApiKey, CatalogueDep, MetricsDep, ModelDep, SettingsDep
from service.catalogue import Catalogue, CatalogueUnavailable, Written
from service.logging import request_id_var
from service.metrics import Metrics
from service.schemas import ErrorResponse, ItemResponse, ItemWrite, ItemWriteResponse
from service.serving import ServingModel

log = logging.getLogger("edgerec.items")

router = APIRouter(tags=["items"])

ItemPath = Annotated[str, Path(min_length=1, max_length=256, description="Item id (1-256 characters).")]

_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    503: {
        "model": ErrorResponse,
        "description": 'Redis could not store it: `stored: false` (nothing written) or `"unknown"` (it may '
        "have been; the write is safe to repeat)",
    },
}


@router.get(
    "/items/{item_id}",
    response_model=ItemResponse,
    dependencies=[ApiKey],
    responses={**ERRORS, 404: {"model": ErrorResponse, "description": "Unknown item"}},
)
async def get_item(item_id: ItemPath, model: ModelDep) -> ItemResponse:
    """An item of the served version or of the catalogue (`source` says which; withdrawn items too)."""
    view = model.catalogue
    record = view.records.get(item_id) if view is not None else None
    idx = model.item_index.get(item_id)
    if idx is None and record is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"unknown item {item_id!r} (model {model.version})"
        )
    meta = dict(record if record is not None else model.items[idx])
    for name in ("id", "available", "updated_at"):
        meta.pop(name, None)
    title = meta.pop("title", None)
    reason = view.why_not(model, item_id) if view is not None else None
    return ItemResponse(
        id=item_id,
        title=title,
        fields={k: v for k, v in meta.items() if v is not None},
        popularity=float(model.popularity[idx]) if idx is not None else 0.0,
        model_version=model.version,
        source="model" if idx is not None else "catalogue",
        available=bool(record.get("available")) if record is not None else True,
        recommendable=reason is None,
        reason=reason,
        updated_at=record.get("updated_at") if record is not None else None,
    )


@router.put(
    "/items/{item_id}",
    response_model=ItemWriteResponse,
    dependencies=[AdminKey],
    responses={**_WRITE_ERRORS, 201: {"model": ItemWriteResponse, "description": "A new catalogue item"}},
)
async def put_item(
    item_id: ItemPath,
    body: ItemWrite,
    model: ModelDep,
    catalogue: CatalogueDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    response: Response,
) -> ItemWriteResponse:
    """Add an item or replace its text (an item of the served version too: its title then shows in answers).
    201 for an id the catalogue had no record of, else 200. Stored in Redis before the answer; a new item is
    recommendable through the version's text model (`recommendable`, and `reason` when it is not)."""
    fields = body.model_dump(exclude={"available"})
    try:
        written = await catalogue.put(item_id, fields, body.available)
    except CatalogueUnavailable as exc:
        raise _unavailable(exc, settings.retry_after_s, metrics, "put") from None
    metrics.catalogue_writes.labels("put", "stored").inc()
    if written.created:
        response.status_code = status.HTTP_201_CREATED
    return await _answer(catalogue, model, written)


@router.delete(
    "/items/{item_id}",
    response_model=ItemWriteResponse,
    dependencies=[AdminKey],
    responses={**_WRITE_ERRORS, 404: {"model": ErrorResponse, "description": "Unknown item"}},
)
async def delete_item(
    item_id: ItemPath, model: ModelDep, catalogue: CatalogueDep, settings: SettingsDep, metrics: MetricsDep
) -> ItemWriteResponse:
    """Withdraw an item (of the served version or the catalogue): it leaves every answer at once. The record
    stays, with `available: false`, so the next retrain knows; PUT it again to bring it back."""
    idx = model.item_index.get(item_id)
    known = model.items[idx] if idx is not None else None
    try:
        written = await catalogue.delete(item_id, known)
    except CatalogueUnavailable as exc:
        raise _unavailable(exc, settings.retry_after_s, metrics, "delete") from None
    metrics.catalogue_writes.labels("delete", "stored" if written is not None else "not_found").inc()
    if written is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"unknown item {item_id!r}: neither model {model.version} nor the catalogue has it",
        )
    return await _answer(catalogue, model, written)


async def _answer(catalogue: Catalogue, model: ServingModel, written: Written) -> ItemWriteResponse:
    """The write's answer, after this process's view caught up with it (a failed refresh does not undo the
    stored write: the poller catches up, and the answer says the item is not recommendable here yet)."""
    try:
        await catalogue.refresh(written)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("catalogue refresh after a write failed", extra={"error": str(exc)})
    item_id = written.record["id"]
    view = model.catalogue
    stale = view is None or view.seq is None or view.seq < written.seq
    reason = "not in this process's view yet (Redis could not be read back)" if stale else None
    reason = reason or view.why_not(model, item_id)
    return ItemWriteResponse(
        id=item_id,
        created=written.created,
        available=bool(written.record["available"]),
        updated_at=written.record["updated_at"],
        catalogue_seq=written.seq,
        source="model" if item_id in model.item_index else "catalogue",
        recommendable=reason is None,
        reason=reason,
        model_version=model.version,
        request_id=request_id_var.get(),
    )


def _unavailable(exc: CatalogueUnavailable, retry_after_s: int, metrics: Metrics, op: str) -> HTTPException:
    metrics.catalogue_writes.labels(op, "unknown" if exc.stored == "unknown" else "not_stored").inc()
    if exc.stored == "unknown":
        msg = "catalogue store (Redis) did not answer in time: the write MAY have been stored; repeat it"
    else:
        msg = "catalogue store (Redis) unavailable; nothing was stored; retry later"
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail={"message": f"{msg} ({exc})", "stored": exc.stored},
        headers={"Retry-After": str(retry_after_s)},
    )

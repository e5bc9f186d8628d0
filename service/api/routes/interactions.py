"""POST /users/{user_id}/interactions: durable append to the interaction stream + live history."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from service.api.common import ERRORS, UserPath, unknown_items
from service.api.deps import ApiKey, CacheDep, MetricsDep, ModelDep, RecommenderDep, SettingsDep
from service.cache import RedisUnavailable
from service.logging import request_id_var
from service.recommender import UnknownItemsError
from service.schemas import ErrorResponse, InteractionsRequest, InteractionsResponse

router = APIRouter(tags=["interactions"], dependencies=[ApiKey])


@router.post(
    "/users/{user_id}/interactions",
    response_model=InteractionsResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        **ERRORS,
        503: {"model": ErrorResponse, "description": "Redis unavailable; retry after Retry-After"},
    },
)
async def add_interactions(
    user_id: UserPath,
    body: InteractionsRequest,
    model: ModelDep,
    rec: RecommenderDep,
    cache: CacheDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> InteractionsResponse:
    """Record interactions. Answered 201 only after Redis stored them (stream + live history, one
    transaction); the user's cached neighbourhood is invalidated, so the next recommendation reflects them."""
    try:
        rec.item_indices(model, body.items, "items")
    except UnknownItemsError as exc:
        raise unknown_items(exc) from None
    try:
        entry = await cache.append_interactions(user_id, body.items, body.timestamps, model.version)
    except RedisUnavailable:
        metrics.errors.labels("interaction_not_stored").inc()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="interaction store (Redis) unavailable; nothing was stored, retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
        ) from None
    metrics.interactions.inc(len(body.items))
    return InteractionsResponse(
        user_id=user_id, accepted=len(body.items), stream_id=entry, request_id=request_id_var.get()
    )

"""POST /recommend/{user_id} and POST /recommend (a batch of users)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Path, Response, status

from service.api.deps import ApiKey, ModelDep, RecommenderDep
from service.cache import USER_ID_RE
from service.logging import request_id_var
from service.recommender import Recommendation, UnknownItemsError
from service.schemas import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    ErrorResponse,
    RecommendOptions,
    RecommendResponse,
)
from service.serving import ServingModel

router = APIRouter(tags=["recommend"], dependencies=[ApiKey])

UserPath = Annotated[
    str,
    Path(
        pattern=USER_ID_RE.pattern,
        min_length=1,
        max_length=128,
        description="User id (1-128 of A-Z a-z 0-9 _ . : @ -); unknown users get a cold start.",
    ),
]

ERRORS = {
    401: {"model": ErrorResponse, "description": "API key missing"},
    403: {"model": ErrorResponse, "description": "API key wrong"},
    413: {"model": ErrorResponse, "description": "Body too large"},
    422: {"model": ErrorResponse, "description": "Invalid input (names the problem, e.g. unknown item ids)"},
    503: {"model": ErrorResponse, "description": "No model loaded yet"},
}


def to_response(model: ServingModel, rec: Recommendation) -> dict[str, Any]:
    """The RecommendResponse of ``rec`` as plain data (the routes serialise it with orjson, see _json)."""
    finite = np.isfinite(rec.scores)
    items = [
        {"id": model.item_ids[i], "score": s, "title": model.items[i].get("title")}
        for i, s in zip(rec.item_idx[finite].tolist(), rec.scores[finite].tolist(), strict=True)
    ]
    return {
        "user_id": rec.user_id,
        "items": items,
        "model_version": rec.version,
        "fallback": rec.fallback,
        "fallback_reasons": rec.reasons,
        "request_id": request_id_var.get(),
    }


def _json(payload: dict[str, Any]) -> Response:
    """Answer with orjson bytes. Returning a Response skips FastAPI's response_model pass, which builds and
    validates a model per item and serialises through jsonable_encoder: ~10x the cost of this dump for a
    10-item answer, on the event loop of every request. ``response_model`` still documents the shape, and the
    tests check answers against it."""
    return Response(orjson.dumps(payload), media_type="application/json")


def _unknown(exc: UnknownItemsError) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["body", exc.field_name], "msg": str(exc), "type": "unknown_item", "input": exc.ids}],
    )


@router.post("/recommend/{user_id}", response_model=RecommendResponse, responses=ERRORS)
async def recommend(
    user_id: UserPath, model: ModelDep, rec: RecommenderDep, body: RecommendOptions | None = None
) -> Response:
    """Top-k items for one user (a body is optional: defaults k=10, exclude_seen=true)."""
    opts = body or RecommendOptions()
    try:
        result = await rec.recommend(
            model,
            user_id,
            k=opts.k,
            exclude_seen=opts.exclude_seen,
            exclude_items=opts.exclude_items,
            recent_items=opts.recent_items,
        )
    except UnknownItemsError as exc:
        raise _unknown(exc) from None
    return _json(to_response(model, result))


@router.post("/recommend", response_model=BatchRecommendResponse, responses=ERRORS)
async def recommend_batch(body: BatchRecommendRequest, model: ModelDep, rec: RecommenderDep) -> Response:
    """Top-k items for several users in one call (their encoder passes share micro-batches)."""
    # Validate every entry's items first, so a bad entry fails the call before any work is done.
    for n, e in enumerate(body.requests):
        try:
            rec.item_indices(model, e.recent_items, f"requests[{n}].recent_items")
        except UnknownItemsError as exc:
            raise _unknown(exc) from None
    results = await asyncio.gather(
        *(
            rec.recommend(
                model,
                e.user_id,
                k=e.k,
                exclude_seen=e.exclude_seen,
                exclude_items=e.exclude_items,
                recent_items=e.recent_items,
            )
            for e in body.requests
        )
    )
    return _json(
        {
            "results": [to_response(model, r) for r in results],
            "model_version": model.version,
            "request_id": request_id_var.get(),
        }
    )

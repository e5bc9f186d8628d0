"""GET /items/{item_id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from service.api.common import ERRORS
from service.api.deps import ApiKey, ModelDep
from service.schemas import ErrorResponse, ItemResponse

router = APIRouter(tags=["items"], dependencies=[ApiKey])


@router.get(
    "/items/{item_id}",
    response_model=ItemResponse,
    responses={**ERRORS, 404: {"model": ErrorResponse, "description": "Unknown item"}},
)
async def get_item(
    item_id: Annotated[str, Path(min_length=1, max_length=256)], model: ModelDep
) -> ItemResponse:
    """An item of the served model's catalogue."""
    idx = model.item_index.get(item_id)
    if idx is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"unknown item {item_id!r} (model {model.version})"
        )
    meta = dict(model.items[idx])
    meta.pop("id", None)
    title = meta.pop("title", None)
    return ItemResponse(
        id=item_id,
        title=title,
        fields=meta,
        popularity=float(model.popularity[idx]),
        model_version=model.version,
    )

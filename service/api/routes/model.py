"""GET /model: the served version, its metrics and how it runs."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.common import ERRORS
from service.api.deps import ApiKey, ModelDep
from service.schemas import ModelResponse

router = APIRouter(tags=["model"], dependencies=[ApiKey])


@router.get("/model", response_model=ModelResponse, responses=ERRORS)
async def get_model_info(model: ModelDep) -> ModelResponse:
    return ModelResponse(**model.describe())

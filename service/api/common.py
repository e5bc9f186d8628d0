"""What several routes share: the user-id path parameter, the documented error answers, the 422 for unknown
item ids, and the orjson response. Routes import these from here, never from each other."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import HTTPException, Path, Response, status

from service.cache import USER_ID_RE
from service.recommender import UnknownItemsError
from service.schemas import ErrorResponse

UserPath = Annotated[
    str,
    Path(
        pattern=USER_ID_RE.pattern,
        min_length=1,
        max_length=128,
        description="User id (1-128 of A-Z a-z 0-9 _ . : @ -); unknown users get a cold start.",
    ),
]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API key missing"},
    403: {"model": ErrorResponse, "description": "API key wrong"},
    413: {"model": ErrorResponse, "description": "Body too large"},
    422: {"model": ErrorResponse, "description": "Invalid input (names the problem, e.g. unknown item ids)"},
    503: {"model": ErrorResponse, "description": "No model loaded yet"},
}


def unknown_items(exc: UnknownItemsError) -> HTTPException:
    """The 422 that names every unknown item id of one body field."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["body", exc.field_name], "msg": str(exc), "type": "unknown_item", "input": exc.ids}],
    )


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    """Answer with orjson bytes. Returning a Response skips FastAPI's response_model pass, which builds and
    validates a model per item and serialises through jsonable_encoder: ~10x the cost of this dump for a
    10-item answer, on the event loop of every request. ``response_model`` still documents the shape, and the
    tests check answers against it."""
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")

"""The JSON error answers: ``{detail, request_id}``, valid JSON whatever the input was.

Validation errors echo the offending input, and input can be anything JSON-ish Python parsed: ``1e309`` and
``NaN`` become non-finite floats (not JSON), a ``"\\ud800"`` escape a lone surrogate (not UTF-8). Echoing
those (or an integer beyond 64 bits) made the error handler itself fail with a 500; ``json_safe`` writes
them as strings instead."""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.deps import auth_error
from service.logging import request_id_var


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf", "nan"
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate as "\ud800"
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)  # beyond what JSON parsers (and orjson) take as a number
    if value is None or isinstance(value, bool | int | float):
        return value
    return json_safe(str(value))  # exceptions in a validation error's ctx, bytes, ...


def error_response(status_code: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    body = {"detail": json_safe(detail), "request_id": request_id_var.get()}
    return Response(orjson.dumps(body), status_code, headers=headers, media_type="application/json")


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return error_response(exc.status_code, exc.detail, getattr(exc, "headers", None))


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    denied = await auth_error(request)  # the key is checked before the body, as for every other request
    if denied is not None:
        return await http_error(request, denied)
    return error_response(422, exc.errors())

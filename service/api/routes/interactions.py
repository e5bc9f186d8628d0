"""POST /users/{user_id}/interactions: exactly-once append to the interaction stream + live history.

Every write has an idempotency key (the client's ``Idempotency-Key`` header, or one derived from user, items
and timestamps) and is stored at most once per key; the answer always echoes the key. A 503 says whether
the write certainly was not stored (``stored: false``) or may have been (``stored: "unknown"``): either way a
retry with the same key is safe and never stores it twice."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response, status

from service.api.common import ERRORS, UserPath, unknown_items
from service.api.deps import ApiKey, CacheDep, MetricsDep, ModelDep, RecommenderDep, SettingsDep
from service.cache import WriteFailed, WriteOutcomeUnknown
from service.idempotency import IDEMPOTENCY_KEY_RE, IDEMPOTENCY_KEY_RULE, IdempotencyConflict
from service.logging import request_id_var
from service.recommender import UnknownItemsError
from service.schemas import ErrorResponse, InteractionsRequest, InteractionsResponse

router = APIRouter(tags=["interactions"], dependencies=[ApiKey])

KEY_HEADER = "Idempotency-Key"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=KEY_HEADER,
        pattern=IDEMPOTENCY_KEY_RE.pattern,
        description=f"Makes retries safe: the write is stored at most once per key and user "
        f"({IDEMPOTENCY_KEY_RULE}; remembered EDGEREC_IDEMPOTENCY_TTL_S). Omitted: derived from the request "
        "(user, items, timestamps), so an identical request within that time is the same write.",
    ),
]


@router.post(
    "/users/{user_id}/interactions",
    response_model=InteractionsResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        **ERRORS,
        422: {"model": ErrorResponse, "description": "Invalid input, or an Idempotency-Key reused elsewhere"},
        503: {
            "model": ErrorResponse,
            "description": 'Not stored (`stored: false`) or outcome unknown (`stored: "unknown"`); retry '
            "after Retry-After with the Idempotency-Key the answer names",
        },
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
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> InteractionsResponse:
    """Record interactions with items the served version knows or the catalogue has available (others are
    a 422). 201 only once Redis stored them (stream entry + live history + idempotency
    record, one atomic script); the user's cached neighbourhood is invalidated, so the next recommendation
    reflects them. A repeat of a stored write (same key) stores nothing and answers 201 with the first
    write's `stream_id` and `replayed: true` (header `Idempotent-Replayed: true`)."""
    try:
        rec.item_indices(model, body.items, "items")
    except UnknownItemsError as exc:
        raise unknown_items(exc) from None
    try:
        result = await cache.append_interactions(
            user_id, body.items, body.timestamps, model.version, idempotency_key
        )
    except IdempotencyConflict as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["header", KEY_HEADER], "msg": str(exc), "type": "idempotency_key_reused"}],
        ) from None
    except WriteFailed as exc:
        unknown = isinstance(exc, WriteOutcomeUnknown)
        metrics.errors.labels("interaction_unknown" if unknown else "interaction_not_stored").inc()
        raise _unavailable(exc, unknown, settings.retry_after_s) from None
    metrics.interactions.inc(0 if result.replayed else len(body.items))
    response.headers[KEY_HEADER] = result.idempotency_key
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return InteractionsResponse(
        user_id=user_id,
        accepted=len(body.items),
        stream_id=result.stream_id,
        idempotency_key=result.idempotency_key,
        replayed=result.replayed,
        request_id=request_id_var.get(),
    )


def _unavailable(exc: WriteFailed, unknown: bool, retry_after_s: int) -> HTTPException:
    key = exc.idempotency_key
    if unknown:
        msg = (
            "interaction store (Redis) did not answer in time: the write MAY have been stored; retry with "
            f"header {KEY_HEADER}: {key} (safe: it is stored at most once)"
        )
    else:
        msg = f"interaction store (Redis) unavailable; nothing was stored; retry later ({KEY_HEADER}: {key})"
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail={"message": msg, "stored": "unknown" if unknown else False, "idempotency_key": key},
        headers={"Retry-After": str(retry_after_s), KEY_HEADER: key},
    )

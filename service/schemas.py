"""Request and response models of the HTTP API (they are the OpenAPI schema clients see)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from service.cache import USER_ID_RE

MAX_K = 1000
MAX_IDS = 1000  # ids per list in one request
MAX_BATCH_USERS = 256

MAX_TIMESTAMP = 1e11  # UNIX seconds (year 5138): a millisecond timestamp is an error, not a far future


def _no_surrogates(value: str) -> str:
    """A lone surrogate (JSON "\\ud800") is not text: it cannot be stored, logged or echoed as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_surrogates)]
Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)]
UserId = Annotated[str, StringConstraints(pattern=USER_ID_RE.pattern, min_length=1, max_length=128)]
Fallback = Literal["popularity", "cold_start_context", "cache_unavailable"]


class _Strict(BaseModel):
    # strict: no coercion, so "10" and true are not an integer k, "yes" is not a boolean
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendOptions(_Strict):
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    exclude_seen: bool = Field(
        True, description="Leave out items the user has interacted with (train + live)."
    )
    exclude_items: list[ItemId] = Field(
        default_factory=list,
        max_length=MAX_IDS,
        description="Items never to return (unknown ids are ignored).",
    )
    recent_items: list[ItemId] = Field(
        default_factory=list,
        max_length=MAX_IDS,
        description="Session context, oldest first: extends a known user's history and is the cold-start "
        "prompt of an unknown one. Unknown ids are a 422.",
    )


class BatchEntry(RecommendOptions):
    user_id: UserId


class BatchRecommendRequest(_Strict):
    requests: list[BatchEntry] = Field(..., min_length=1, max_length=MAX_BATCH_USERS)


class RecommendedItem(BaseModel):
    id: str
    score: float
    title: str | None = None


class RecommendResponse(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    model_version: str
    fallback: Fallback | None = Field(
        None, description="Null when the personalised model answered; else the main fallback that answered."
    )
    fallback_reasons: list[Fallback] = Field(default_factory=list, description="Every fallback that applied.")
    request_id: str | None = None


class BatchRecommendResponse(BaseModel):
    results: list[RecommendResponse]
    model_version: str
    request_id: str | None = None


class InteractionsRequest(_Strict):
    items: list[ItemId] = Field(..., min_length=1, max_length=MAX_IDS, description="Item ids, oldest first.")
    timestamps: list[Timestamp] | None = Field(
        None,
        description="Optional UNIX timestamps in seconds (finite, 0 to 1e11), one per item.",
    )

    @model_validator(mode="after")
    def _same_length(self) -> InteractionsRequest:
        if self.timestamps is not None and len(self.timestamps) != len(self.items):
            raise ValueError(f"timestamps has {len(self.timestamps)} entries but items has {len(self.items)}")
        return self


class InteractionsResponse(BaseModel):
    user_id: str
    accepted: int
    stream_id: str = Field(description="Id of the durable Redis stream entry.")
    idempotency_key: str = Field(description="The write's key (the client's, or derived): retry with it.")
    replayed: bool = Field(
        False, description="True: an earlier request with this key stored the write; this one stored nothing."
    )
    request_id: str | None = None


class ItemResponse(BaseModel):
    id: str
    title: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict, description="Other item text fields.")
    popularity: float = Field(description="Train interactions of the item.")
    model_version: str


class ModelResponse(BaseModel):
    version: str
    created_at: str
    metrics: dict[str, Any]
    dataset_fingerprint: str | None = None
    n_users: int
    n_items: int
    encoder: str
    encoder_providers: list[str]
    index: str
    index_device: str
    loaded_at: float


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model_version: str | None
    cache: Literal["ok", "unavailable"]
    detail: str | None = None


class ReloadRequest(_Strict):
    version: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Version id or alias (current, previous, latest) to load and pin; omitted: unpin and "
        "load the promoted one.",
    )


class ReloadResponse(BaseModel):
    previous_version: str | None
    version: str
    changed: bool
    pinned: bool = Field(
        description="True while a version is pinned: the store poller does not follow promotions until "
        "POST /admin/reload without a version unpins it."
    )


class ErrorResponse(BaseModel):
    detail: Any
    request_id: str | None = None

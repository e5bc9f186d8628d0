"""Request and response models of the HTTP API (they are the OpenAPI schema clients see)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

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
    explain: bool = Field(
        False,
        description="Give each returned item up to 3 `reasons` from the graph its prompt was built on (the "
        "model version's train graph and the user's train, live and recent items): history items that "
        "co-occur with it, the share of similar users who chose it, or, for a new catalogue item, the known "
        "item its text is nearest to. Off: items carry no `reasons` key.",
    )


class BatchEntry(RecommendOptions):
    user_id: UserId


class BatchRecommendRequest(_Strict):
    requests: list[BatchEntry] = Field(..., min_length=1, max_length=MAX_BATCH_USERS)


class CoOccurrenceReason(BaseModel):
    """One of the user's own items that other users chose together with the recommended item."""

    kind: Literal["co_occurrence"] = "co_occurrence"
    item_id: str = Field(description="The user's item (train, live or recent history).")
    title: str | None = None
    count: int = Field(description="Train users (other than this user) who chose both items.")
    strength: float = Field(
        description="count / degree(recommended item) ** two_hop_norm (the version's prompt setting, 0.5 by "
        "default): this history item's part of the recommended item's two-hop weight, which ranks the "
        "prompt's candidates and sets the candidate prior's strength. Comparable across items and users."
    )


class CoUsersReason(BaseModel):
    """Users who share the most items with this user (the prompt's second-order users) chose it."""

    kind: Literal["co_users"] = "co_users"
    share: float = Field(description="count / co_users, in (0, 1].")
    count: int = Field(description="Second-order users whose train items include the recommended item.")
    co_users: int = Field(description="Second-order users in the user's prompt.")


class SimilarTextReason(BaseModel):
    """A new catalogue item (no interactions yet) recommended through its text."""

    kind: Literal["similar_text"] = "similar_text"
    item_id: str = Field(
        description="A known item with similar text: one of the user's own items (in_history: true; the "
        "text model's history affinity scored the new item by these), or the item whose text is nearest to "
        "the new item's, its stand-in in prompts (in_history: false; not necessarily one the user has)."
    )
    title: str | None = None
    similarity: float = Field(
        description="Cosine similarity of the two texts in the version's text model, 0-1."
    )
    in_history: bool = Field(False, description="Whether item_id is one of the user's own items.")


Reason = Annotated[CoOccurrenceReason | CoUsersReason | SimilarTextReason, Field(discriminator="kind")]


class RecommendedItem(BaseModel):
    id: str
    score: float
    title: str | None = None
    reasons: list[Reason] | None = Field(
        None,
        description="Only with `explain: true`: at most 3, co-occurrences first (strongest first), then the "
        "co-users share; empty when the graph holds no reason (e.g. a popularity answer).",
    )

    @model_serializer(mode="wrap")
    def _omit_reasons_unless_asked(self, handler: SerializerFunctionWrapHandler):
        # Without `explain` an item has no `reasons` key at all (the answer is what it was before the field).
        # No return annotation: with one, the OpenAPI output schema would be that type, not these fields.
        out = handler(self)
        if self.reasons is None:
            out.pop("reasons", None)
        return out


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
    popularity: float = Field(description="Train interactions of the item (0 for a catalogue item).")
    model_version: str
    source: Literal["model", "catalogue"] = Field(
        "model",
        description="model: the served version knows the item; catalogue: added with PUT /items since.",
    )
    available: bool = Field(True, description="False once withdrawn (DELETE /items or available: false).")
    recommendable: bool = Field(True, description="Whether it can appear in answers now.")
    reason: str | None = Field(None, description="Why it cannot appear in answers (null when it can).")
    updated_at: float | None = Field(None, description="UNIX time of the last catalogue write, if any.")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _text(max_length: int) -> Any:
    return Annotated[str, StringConstraints(max_length=max_length), AfterValidator(_no_surrogates)]


# The longest text an item write accepts, per field (characters).
ITEM_TEXT_LIMITS = {"title": 500, "brand": 200, "categories": 1000, "description": 5000}


class ItemWrite(_Strict):
    """An item's text, as ingestion reads it from a dataset (title, brand, categories, description)."""

    title: Annotated[
        str,
        StringConstraints(min_length=1, max_length=ITEM_TEXT_LIMITS["title"]),
        AfterValidator(_no_surrogates),
        AfterValidator(_not_blank),
    ] = Field(description=f"Required, 1-{ITEM_TEXT_LIMITS['title']} characters, not blank.")
    brand: _text(ITEM_TEXT_LIMITS["brand"]) | None = Field(
        None, description=f"Up to {ITEM_TEXT_LIMITS['brand']} characters."
    )
    categories: _text(ITEM_TEXT_LIMITS["categories"]) | None = Field(
        None,
        description=f"Up to {ITEM_TEXT_LIMITS['categories']} characters, e.g. "
        "`Office Products; Paper; Notebooks`.",
    )
    description: _text(ITEM_TEXT_LIMITS["description"]) | None = Field(
        None, description=f"Up to {ITEM_TEXT_LIMITS['description']} characters."
    )
    available: bool = Field(True, description="False withdraws the item (as DELETE does).")


def item_write_body(item_id: str, text: dict[str, str]) -> dict[str, str]:
    """A ``PUT /items/{id}`` body from a dataset's item text (``inference.item_text.TEXT_FIELDS``): empty
    fields left out, each field cut to :data:`ITEM_TEXT_LIMITS` (the service refuses longer ones with a
    422), the title falling back to the id."""
    body = {}
    for name, limit in ITEM_TEXT_LIMITS.items():
        value = (text.get(name) or "").strip()
        if value:
            body[name] = value[:limit]
    body.setdefault("title", item_id[: ITEM_TEXT_LIMITS["title"]])
    return body


class ItemWriteResponse(BaseModel):
    id: str
    created: bool = Field(description="True: the catalogue had no record of the item before.")
    available: bool
    updated_at: float = Field(description="UNIX time of this write.")
    catalogue_seq: int = Field(description="The catalogue's sequence number after this write.")
    source: Literal["model", "catalogue"] = Field(
        description="model: the served version knows the item (the write updates or withdraws it); "
        "catalogue: a new item."
    )
    recommendable: bool = Field(description="Whether this process can put it in answers now.")
    reason: str | None = Field(None, description="Why it cannot (null when it can).")
    model_version: str
    request_id: str | None = None


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

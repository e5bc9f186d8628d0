"""POST /recommend/{user_id} and POST /recommend (a batch of users)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Response

from service.api.common import ERRORS, UserPath, json_response, unknown_items
from service.api.deps import ApiKey, ModelDep, RecommenderDep
from service.catalogue import item_label
from service.explain import explain
from service.logging import request_id_var
from service.recommender import Recommendation, UnknownItemsError
from service.schemas import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    RecommendOptions,
    RecommendResponse,
)
from service.serving import ServingModel

router = APIRouter(tags=["recommend"], dependencies=[ApiKey])


def _reasons(model: ServingModel, rec: Recommendation, idx: np.ndarray) -> list[orjson.Fragment]:
    """Each item's reasons (service.explain), naming items by id and title, as JSON ready to splice into the
    answer: the version's reason cache keeps them that way (~4.5 KB per answer of 10 items instead of ~13 KB
    of dicts, and a cached answer costs no serialising)."""
    view = model.catalogue
    user = model.user_index.get(rec.user_id)

    def compute() -> list[orjson.Fragment]:
        per_item = explain(
            model.graph,
            idx,
            rec.history,
            rec.co_users,
            user=user,
            item_norm=model.builder.cfg.two_hop_norm,
            similar=view.similar(idx.tolist(), rec.history, model.text) if view is not None else {},
            pairs=model.pairs,
        )
        for reasons in per_item:
            for r in reasons:
                if "item" in r:
                    i = r.pop("item")
                    r["item_id"], r["title"] = item_label(model, i)
        # str, not orjson's bytes: those keep orjson's 1 KB starting buffer (13 KB per cached answer, not 5)
        return [orjson.Fragment(orjson.dumps(reasons).decode()) for reasons in per_item]

    # A digest of everything explain() and the labels read besides the version's graph: the catalogue's
    # sequence (text reasons, titles), the user, the items, the history and the co-users, as int64 bytes
    # whatever their source's dtype. 16 bytes per entry instead of ~1 KB of arrays; 128 bits leave no chance
    # of two answers sharing one.
    h = hashlib.blake2b(repr((view.seq if view is not None else None, user)).encode(), digest_size=16)
    for a in (idx, rec.history, rec.co_users):
        h.update(np.asarray(a, np.int64).tobytes())
        h.update(b"|")
    return model.reason_cache.get(h.digest(), compute)


def to_response(model: ServingModel, rec: Recommendation, explain_items: bool = False) -> dict[str, Any]:
    """The RecommendResponse of ``rec`` as plain data (serialised with orjson by json_response)."""
    finite = np.isfinite(rec.scores)
    idx = rec.item_idx[finite]
    labels = [item_label(model, i) for i in idx.tolist()]  # new catalogue items too (codes >= n_items)
    items = [
        {"id": item_id, "score": s, "title": title}
        for (item_id, title), s in zip(labels, rec.scores[finite].tolist(), strict=True)
    ]
    if explain_items:
        for item, reasons in zip(items, _reasons(model, rec, idx), strict=True):
            item["reasons"] = reasons
    return {
        "user_id": rec.user_id,
        "items": items,
        "model_version": rec.version,
        "fallback": rec.fallback,
        "fallback_reasons": rec.reasons,
        "request_id": request_id_var.get(),
    }


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
        raise unknown_items(exc) from None
    return json_response(to_response(model, result, opts.explain))


@router.post("/recommend", response_model=BatchRecommendResponse, responses=ERRORS)
async def recommend_batch(body: BatchRecommendRequest, model: ModelDep, rec: RecommenderDep) -> Response:
    """Top-k items for several users in one call (their encoder passes share micro-batches)."""
    # Validate every entry's items first, so a bad entry fails the call before any work is done.
    for n, e in enumerate(body.requests):
        try:
            rec.item_indices(model, e.recent_items, f"requests[{n}].recent_items")
        except UnknownItemsError as exc:
            raise unknown_items(exc) from None
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
    return json_response(
        {
            "results": [
                to_response(model, r, e.explain) for r, e in zip(results, body.requests, strict=True)
            ],
            "model_version": model.version,
            "request_id": request_id_var.get(),
        }
    )

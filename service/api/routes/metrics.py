"""GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import MetricsDep, MetricsKey

router = APIRouter(tags=["metrics"], dependencies=[MetricsKey])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(m: MetricsDep) -> Response:
    body, content_type = m.render()
    return Response(content=body, media_type=content_type)

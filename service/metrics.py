"""The service's Prometheus metrics, on a registry owned by one app instance (tests run several apps per
process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Millisecond-scale buckets: the request path's stages take 0.05-50 ms on a CPU.
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

STAGES = ("cache", "neighbourhood", "prompt", "encode", "search")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_seconds = Histogram(
            "edgerec_stage_seconds",
            "Latency of one stage of the recommendation path (encode/search: per micro-batch).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "edgerec_request_seconds",
            "HTTP request latency by route template and status class.",
            ["route", "method", "status"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "edgerec_cache_lookups_total",
            "Neighbourhood cache lookups by result (hit, miss, error: Redis unavailable).",
            ["result"],
            registry=r,
        )
        self.fallbacks = Counter(
            "edgerec_fallbacks_total",
            "Recommendations answered by a fallback, by reason.",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "edgerec_batch_size", "Requests per encoder micro-batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.errors = Counter(
            "edgerec_errors_total",
            "Errors by kind (http_5xx, redis, unhandled, ...).",
            ["kind"],
            registry=r,
        )
        self.encoder_skipped = Counter(
            "edgerec_encoder_skipped_total",
            "Personalised answers served from a cached user vector (no encoder pass).",
            registry=r,
        )
        self.recommendations = Counter(
            "edgerec_recommendations_total", "Users answered by the recommend endpoints.", registry=r
        )
        self.interactions = Counter(
            "edgerec_interactions_total", "Interaction items durably stored.", registry=r
        )
        self.reloads = Counter(
            "edgerec_model_reloads_total", "Model reload attempts by outcome.", ["outcome"], registry=r
        )
        self.load_failing = Gauge(
            "edgerec_model_load_failing",
            "1 while the last model load failed (the previous version, if any, keeps serving).",
            registry=r,
        )
        self.model_info = Gauge(
            "edgerec_model_info", "1 for the model version being served.", ["version"], registry=r
        )
        self.warm_progress = Gauge(
            "edgerec_cache_warm_progress",
            "Share of known users whose entry the warmer has filled.",
            registry=r,
        )
        self.redis_up = Gauge("edgerec_redis_up", "1 while the last Redis call succeeded.", registry=r)
        hit_ratio = Gauge(
            "edgerec_cache_hit_ratio", "Neighbourhood cache hits / lookups since start.", registry=r
        )
        hit_ratio.set_function(self.cache_hit_ratio)
        for res in ("hit", "miss", "error"):  # export zeros from the start so rate() works at once
            self.cache_lookups.labels(res)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(name).observe(time.perf_counter() - start)

    def set_model(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version).set(1)

    def cache_hit_ratio(self) -> float:
        """Hits over all lookups since start (0 before the first lookup)."""
        counts = {
            res: self.registry.get_sample_value("edgerec_cache_lookups_total", {"result": res}) or 0.0
            for res in ("hit", "miss", "error")
        }
        total = sum(counts.values())
        return counts["hit"] / total if total else 0.0

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

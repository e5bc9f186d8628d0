"""The service's Prometheus metrics, on a registry owned by one app instance (tests run several apps per
process).

With more than one worker process (``edgerec serve --workers N``) each worker counts in its own memory, and a
scrape reaches one of them. ``edgerec serve`` then points ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder
before the workers start: prometheus-client keeps every worker's values in files there, and ``/metrics``
answers with their sum over workers (counters, histograms), the live workers' max or min (gauges: a model
load failing in any worker, Redis down in any worker) and each served version. The families read from a
worker's own state when scraped (catalogue view, reason cache, last retrain) are the answering worker's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from service.config import MULTIPROC_ENV

if TYPE_CHECKING:
    from service.catalogue import CatalogueView
    from service.explain import ReasonCache

# The last retrain's status record, under the model store (written atomically by `edgerec retrain`).
RETRAIN_STATUS_FILE = Path("retrain") / "last.json"

# Millisecond-scale buckets: the request path's stages take 0.05-50 ms on a CPU.
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

STAGES = ("cache", "neighbourhood", "prompt", "encode", "search")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, retrain_status: Path | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))  # see the module docstring
        self._version: str | None = None  # the version model_info says is served
        r = self.registry
        # read from this process's state when scraped (in multiprocess mode: the answering worker's)
        self._own: list = []
        if retrain_status is not None:
            self._own.append(RetrainStatus(retrain_status))
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
        # multiprocess_mode: how a gauge merges over live workers (ignored with one process)
        self.load_failing = Gauge(
            "edgerec_model_load_failing",
            "1 while the last model load failed (the previous version, if any, keeps serving).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_info = Gauge(
            "edgerec_model_info",
            "1 for the model version being served (by any worker; 0 for one no worker serves any more).",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.warm_progress = Gauge(
            "edgerec_cache_warm_progress",
            "Share of known users whose entry the warmer has filled.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.redis_up = Gauge(
            "edgerec_redis_up",
            "1 while the last Redis call succeeded (in every worker).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.catalogue_writes = Counter(
            "edgerec_catalogue_writes_total",
            "Catalogue writes (PUT/DELETE /items) by operation and outcome: stored, not_stored, unknown "
            "(Redis may have stored it), not_found (DELETE of an item nobody knows).",
            ["op", "outcome"],
            registry=r,
        )
        for op in ("put", "delete"):
            for outcome in ("stored", "not_stored", "unknown"):
                self.catalogue_writes.labels(op, outcome)
        # the served catalogue view, read when scraped; lifespan points it at its model holder
        self.catalogue_view: Callable[[], CatalogueView | None] = lambda: None
        self._own.append(CatalogueGauges(lambda: self.catalogue_view()))
        # the served version's reason cache (explain: true), read when scraped; lifespan sets it too
        self.reason_cache: Callable[[], ReasonCache | None] = lambda: None
        self._own.append(ReasonCacheMetrics(lambda: self.reason_cache()))
        for collector in self._own:
            r.register(collector)
        if not self.multiprocess:  # (multiprocess: computed from the workers' sum when scraped)
            hit_ratio = Gauge("edgerec_cache_hit_ratio", _HIT_RATIO_DOC, registry=r)
            hit_ratio.set_function(lambda: self.cache_hit_ratio())
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
        # 0 first: in multiprocess mode a cleared series stays in this worker's file with its last value
        if self._version is not None:
            self.model_info.labels(self._version).set(0)
        self.model_info.clear()
        self.model_info.labels(version).set(1)
        self._version = version

    def cache_hit_ratio(self, registry: CollectorRegistry | None = None) -> float:
        """Hits over all lookups since start (0 before the first lookup), in ``registry`` (default: this
        process's)."""
        reg = registry or self.registry
        counts = {
            res: reg.get_sample_value("edgerec_cache_lookups_total", {"result": res}) or 0.0
            for res in ("hit", "miss", "error")
        }
        total = sum(counts.values())
        return counts["hit"] / total if total else 0.0

    def render(self) -> tuple[bytes, str]:
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(merged)  # every worker's values, merged as each metric's mode says
        ratio = self.cache_hit_ratio(merged)
        for collector in self._own:
            merged.register(collector)
        merged.register(_Constant(GaugeMetricFamily("edgerec_cache_hit_ratio", _HIT_RATIO_DOC, value=ratio)))
        return generate_latest(merged), CONTENT_TYPE_LATEST

    def process_exiting(self) -> None:
        """This worker stops: its live gauges leave the merged view (its counters stay in the sums)."""
        if self.multiprocess:
            mark_process_dead(os.getpid())


_HIT_RATIO_DOC = "Neighbourhood cache hits / lookups since start."


class _Constant:
    """One ready metric family as a collector."""

    def __init__(self, family) -> None:
        self.family = family

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        yield self.family


class CatalogueGauges:
    """``edgerec_catalogue_*`` gauges of the served view, read when scraped (the view is replaced whole on a
    change, so one read is one consistent state). No model loaded: no series."""

    def __init__(self, view: Callable[[], CatalogueView | None]) -> None:
        self.view = view

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        v = self.view()
        if v is None:
            return
        available = sum(1 for rec in v.records.values() if rec.get("available"))
        yield GaugeMetricFamily(
            "edgerec_catalogue_seq",
            "Catalogue sequence number this process's view was built from (-1: never loaded).",
            value=float(-1 if v.seq is None else v.seq),
        )
        records = GaugeMetricFamily(
            "edgerec_catalogue_records",
            "Catalogue records in the view, by availability.",
            labels=["available"],
        )
        records.add_metric(["true"], float(available))
        records.add_metric(["false"], float(len(v.records) - available))
        yield records
        yield GaugeMetricFamily(
            "edgerec_catalogue_new_items",
            "Items the served version does not know that are recommendable now (vector from the text model).",
            value=float(len(v.new)),
        )
        yield GaugeMetricFamily(
            "edgerec_catalogue_withdrawn_model_items",
            "Items of the served version withdrawn through the catalogue (left out of every answer).",
            value=float(len(v.excluded)),
        )


class ReasonCacheMetrics:
    """The served version's reason cache (``explain: true``): lookups by result and entries held. Each
    version has its own cache, so the counter starts again at a swap (``rate()`` treats that as a reset)."""

    def __init__(self, cache: Callable[[], ReasonCache | None]) -> None:
        self.cache = cache

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.cache()
        if c is None:
            return
        lookups = CounterMetricFamily(
            "edgerec_reason_cache_lookups",
            "Reason-cache lookups of explain: true answers of the served version, by result.",
            labels=["result"],
        )
        lookups.add_metric(["hit"], float(c.hits))
        lookups.add_metric(["miss"], float(c.misses))
        yield lookups
        yield GaugeMetricFamily(
            "edgerec_reason_cache_entries", "Answers the served version's reason cache holds.", value=len(c)
        )


class RetrainStatus:
    """Gauges of the last ``edgerec retrain`` (``edgerec_retrain_last_*``), read from its status record when
    scraped: one stat per scrape, the JSON parsed again only when the file changed. No record (no retrain
    yet) or an unreadable one: no series, so an alert on their absence fires."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._doc: dict | None = None

    def describe(self) -> list:
        return []  # the series depend on the file; registering must not read it

    def _read(self) -> dict | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            try:
                doc = json.loads(self.path.read_bytes())
            except (OSError, ValueError):
                doc = None
            self._seen, self._doc = seen, doc if isinstance(doc, dict) else None
        return self._doc

    def collect(self) -> Iterator[GaugeMetricFamily]:
        doc = self._read()
        if doc is None:
            return
        gate = doc.get("gate") or {}

        def gauge(name: str, doc_: str, value) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"edgerec_retrain_last_{name}", doc_, value=float(value or 0))

        yield gauge("timestamp_seconds", "Unix time the last retrain finished.", doc.get("finished_at"))
        yield gauge("success", "1 if the last retrain completed (whatever its gate said).", doc.get("ok"))
        yield gauge("duration_seconds", "Wall time of the last retrain.", doc.get("seconds"))
        yield gauge(
            "interactions",
            "Interactions the last retrain learned from.",
            (doc.get("stream") or {}).get("interactions"),
        )
        yield gauge("new_users", "Users the last retrain added.", doc.get("new_users"))
        yield gauge("new_items", "Items the last retrain added.", doc.get("new_items"))
        yield gauge("holdout", "Holdout interactions the last gate scored on.", doc.get("holdout"))
        yield gauge("gate_passed", "1 if the last retrain's candidate passed the gate.", gate.get("passed"))
        yield gauge("gate_promoted", "1 if the last retrain promoted a version.", doc.get("promoted"))
        scores = GaugeMetricFamily(
            "edgerec_retrain_last_gate_score",
            "The last gate's metric (see the info's metric label) for the served and the candidate version.",
            labels=["model"],
        )
        for model in ("served", "candidate"):
            if gate.get(model) is not None:
                scores.add_metric([model], float(gate[model]))
        yield scores
        info = GaugeMetricFamily(
            "edgerec_retrain_last_info",
            "1, labelled with the last retrain's outcome, version and gate metric.",
            labels=["status", "version", "metric"],
        )
        info.add_metric(
            [str(doc.get("status", "")), str(doc.get("version") or ""), str(gate.get("metric") or "")], 1.0
        )
        yield info

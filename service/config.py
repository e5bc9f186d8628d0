"""Service settings: one pydantic-settings class, every field overridable by an ``EDGEREC_*`` environment
variable.

The README's configuration table is generated from the field descriptions here, so each field says what it
does."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Answers a version's reason cache keeps by default: ~4.5 KB each as JSON (benchmarks/explain_bench.py), so
# up to ~145 MB.
REASON_CACHE_SIZE = 32768


# prometheus-client's folder for the values of several worker processes (service/metrics.py): set by `edgerec
# serve --workers N` (or the deployer) before any worker imports prometheus-client.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Settings(BaseSettings):
    # An empty variable (e.g. EDGEREC_API_KEY= in a compose file) means unset, never "require an empty key".
    model_config = SettingsConfigDict(env_prefix="EDGEREC_", extra="ignore", env_ignore_empty=True)

    home: Path = Field(Path(".edgerec"), description="Local state folder (models/, redis/, data/, runs/).")
    model_store: Path | None = Field(None, description="Model store root; default $EDGEREC_HOME/models.")
    model_version: str | None = Field(
        None,
        description="Serve and pin this version instead of the store's promoted (CURRENT) one: the poller "
        "does not follow promotions.",
    )
    host: str = Field("0.0.0.0", description="Bind address of `edgerec serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Port of `edgerec serve`.")
    workers: int = Field(
        1,
        ge=1,
        description="uvicorn worker processes of `edgerec serve`. With more than one, /metrics merges "
        "every worker's counters and histograms (their values live in PROMETHEUS_MULTIPROC_DIR, a "
        "temporary folder unless set); the manifests scale with replicas of one worker each.",
    )

    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:6379/0; redis+cluster://host:port for a Redis Cluster). Unset: "
        "start an embedded redis-server (a child process) with its data in $EDGEREC_HOME/redis.",
    )
    redis_prefix: str = Field(
        "edgerec",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Prefix of every Redis key this service writes.",
    )
    redis_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Connect and read timeout of each Redis call; keep short, a failure falls back.",
    )
    redis_backoff_max_s: float = Field(
        5.0, gt=0, description="After Redis errors, skip Redis for a back-off window that doubles up to this."
    )
    cache_ttl_s: int = Field(
        3600, ge=1, description="TTL of a user's cache entry (neighbourhood, hop distances, user vector)."
    )
    history_max: int = Field(200, ge=1, description="Live interactions kept per user (newest win).")
    stream_maxlen: int = Field(
        1_000_000, ge=1000, description="Approximate cap of the interaction stream (XADD MAXLEN ~)."
    )
    retry_after_s: int = Field(
        1, ge=1, description="Retry-After sent with a 503 when Redis cannot store a write."
    )

    model_poll_s: float = Field(
        10.0,
        ge=0,
        description="Check the store's promoted version this often and hot-swap to it, unless a version "
        "is pinned (0: off).",
    )

    encoder: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="Encoder backend: ONNX Runtime (auto when the version has encoder.onnx) or torch."
    )
    use_gpu: Literal["auto", "yes", "no"] = Field(
        "auto", description="CUDA provider / FAISS GPU: auto uses them when present."
    )
    encoder_int8: bool = Field(
        False, description="Serve encoder.int8.onnx (dynamic INT8 quantisation) when the version has one."
    )
    encoder_threads: int = Field(
        1,
        ge=0,
        description="Intra-op threads of the encoder (0: library default). One leaves a core to the event "
        "loop; more helps only on machines with cores to spare.",
    )
    encode_chunk: int = Field(
        8, ge=1, description="A micro-batch is encoded in length-sorted chunks of at most this many prompts."
    )
    search_threads: int = Field(
        1,
        ge=0,
        description="OpenMP threads of FAISS search (0: library default). One is fastest for the small "
        "per-batch searches of serving and leaves the other cores to HTTP and the encoder.",
    )
    cache_user_vectors: bool = Field(
        True,
        description="Keep the user vector in the cache entry, so a repeat request of an unchanged user skips "
        "the encoder (invalidated with the entry when the user's history changes).",
    )
    reason_cache_size: int = Field(
        REASON_CACHE_SIZE,
        ge=0,
        description="Answers of explain: true whose reasons each served version keeps, as JSON (~4.5 KB per "
        "answer of 10 items: 32768 hold up to ~145 MB; least recently used out first; 0: none), so a repeat "
        "request of an unchanged user needs no graph work. Size it to the users who ask for reasons within a "
        "few hours.",
    )
    gil_switch_interval_ms: float = Field(
        0.5, gt=0, description="Python's GIL switch interval (sys.setswitchinterval) for the server process."
    )
    warm_cache: bool = Field(
        False,
        description="After loading a version, fill every known user's cache entry in the background (one "
        "replica per version; ~5-10 ms of CPU per user).",
    )
    warm_concurrency: int = Field(32, ge=1, le=1024, description="Users warmed concurrently.")
    swap_warm_users: int = Field(
        2000,
        ge=0,
        description="Before a newly loaded version takes traffic, warm the cache entries of up to this many "
        "users this process served most recently (0: off), so a promotion shows no cold-cache cliff.",
    )
    swap_warm_s: float = Field(
        10.0, ge=0, description="Longest time a swap waits for that warm-up (the old version keeps serving)."
    )
    swap_warm_window_s: float = Field(
        300.0, gt=0, description="Only users seen within this many seconds are warmed before a swap."
    )
    prompt_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads that build prompts needing graph work (users with live or session items, cold "
        "starts), off the event loop.",
    )
    prompt_queue: int = Field(
        64,
        ge=0,
        description="Prompt jobs that may wait for those threads; past it a request is answered 503 with "
        "Retry-After (overload shedding).",
    )
    batch_max_size: int = Field(32, ge=1, le=1024, description="Most requests encoded in one micro-batch.")
    batch_max_wait_ms: float = Field(
        1.0, ge=0, description="Longest wait for more requests after the first one of a micro-batch."
    )

    api_key: SecretStr | None = Field(None, description="If set, every request must send it as X-API-Key.")
    admin_api_key: SecretStr | None = Field(
        None, description="Key for /admin/* and PUT/DELETE /items (X-API-Key). Unset: those answer 403."
    )
    auth_exempt_probes: bool = Field(
        True, description="Let /healthz and /readyz through without an API key (for kubelet probes)."
    )
    auth_exempt_metrics: bool = Field(
        False,
        description="Let /metrics through without an API key (for a Prometheus that scrapes by pod "
        "annotation and sends no header; the k8s config sets it).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (else 413).")

    log_level: str = Field("INFO", description="Python log level.")
    log_json: bool = Field(True, description="Structured JSON logs (one object a line); false: plain text.")
    access_log: bool = Field(True, description="One log line per HTTP request (with its request id).")

    stream_shards: int = Field(
        16,
        ge=1,
        le=1024,
        description="Shards of the interaction stream ({prefix}:interactions:{s<k>}); a user's keys share "
        "their shard's Redis Cluster slot. Fixed for a deployment's data (a change orphans live histories).",
    )
    catalogue_refresh_ms: int = Field(
        500,
        ge=10,
        description="Each process checks the catalogue (PUT/DELETE /items) this often and reloads it when it "
        "changed: the bound on how long another replica serves a withdrawn or misses an added item.",
    )
    idempotency_ttl_s: int = Field(
        86_400,
        ge=60,
        description="How long a write's idempotency key is kept: a retry within it is never stored twice.",
    )

    @property
    def store_root(self) -> Path:
        return self.model_store if self.model_store is not None else self.home / "models"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, meaning) for every setting, for the README table."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            "unset"
            if default is None
            else (str(default) if not isinstance(default, bool) else str(default).lower())
        )
        rows.append((f"EDGEREC_{name.upper()}", shown, field.description or ""))
    return rows

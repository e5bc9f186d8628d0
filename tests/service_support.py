"""Service test helpers: the machine's Redis, dedicated redis-server processes, uvicorn in a thread."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import uvicorn
from shared_data import office_users

TEST_REDIS_URL = os.environ.get("EDGEREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_url_or_skip() -> str:
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {TEST_REDIS_URL} unreachable ({exc}); set EDGEREC_TEST_REDIS_URL")
    return TEST_REDIS_URL


def unique_prefix() -> str:
    return f"edgerec-test-{uuid.uuid4().hex[:12]}"


def delete_prefix(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` on a free port in a background thread (real HTTP, real lifespan)."""

    def __init__(self, app, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        # a graceful shutdown that hangs is a bug (a pod would sit out its grace period): fail on it
        if self.thread.is_alive() and exc[0] is None:
            raise AssertionError("uvicorn did not stop within 30 s of should_exit (a shutdown hang)")


# ------------------------------------------------------------------------------------------ tiny real model
SLICE_USERS = 400  # first users (by raw id) of amazon-office; 3-core leaves a few hundred users and items
_STORE: dict[str, object] = {}


@dataclass
class TinyStore:
    root: Path  # model store root
    versions: list[str]  # two versions (seeds 0 and 1); the first is promoted
    user_ids: list[str]
    item_ids: list[str]
    train_items: dict[str, list[str]]  # raw user id -> raw train item ids


def tiny_store() -> TinyStore:
    """Two tiny real model versions (1 layer, 32-d, one fine-tuning epoch; the first with the candidate
    prior and no graph bias, the second the other way round) on a slice of amazon-office, trained and
    exported through training/ once per test process (shared by every service test module)."""
    if "store" in _STORE:
        return _STORE["store"]  # type: ignore[return-value]
    import torch

    from training.data.dataset import prepare
    from training.export.exporter import publish

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="edgerec-service-tests-"))
    atexit.register(shutil.rmtree, root, True)
    ds = prepare(office_users(SLICE_USERS), "office-tiny", k_core=3)
    ds.save(root / "data")
    versions = []
    for seed in (0, 1):
        # version 0 is the default kind (candidate prior: encoder with two outputs, boosted search; no graph
        # bias, so no BFS), version 1 the other (no prior; the hop-distance bias, so stored distances): the
        # service serves and hot-swaps both kinds
        folder = tiny_version(
            root / "data", root / f"run{seed}", seed, candidate_prior=seed == 0, bias={"enabled": seed == 1}
        )
        versions.append(publish(folder, root / "store", promote=seed == 0))
    train_items = {ds.user_ids[u]: [ds.item_ids[i] for i in ds.train[u].indices] for u in range(ds.n_users)}
    store = TinyStore(root / "store", versions, list(ds.user_ids), list(ds.item_ids), train_items)
    _STORE["store"] = store
    return store


def tiny_version(data: Path, run: Path, seed: int, **overrides) -> Path:
    """Train and export one tiny version (1 layer, 32-d, one fine-tuning epoch, the prior's weight fixed at
    2) of a prepared dataset; returns the export folder (``run`` + ``-export``), ready to publish."""
    from training.export.exporter import export_run
    from training.recipe.train import TrainConfig, train

    cfg = TrainConfig(
        dataset=str(data),
        run_dir=str(run),
        seed=seed,
        n_layer=1,
        n_embd=32,
        n_head=2,
        word_vocab=300,
        pretrain_rounds=0,
        content_warmup=0,
        epochs=1,
        patience=1,
        prompt={"max_history": 30, "n_co_users": 5, "n_two_hop_items": 5, "candidate_strength": 1.0},
        prior_grid=(2.0,),
        **overrides,
    )
    train(cfg, quiet=True)
    return export_run(run, run.parent / f"{run.name}-export")

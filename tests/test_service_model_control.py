"""Which version serves: the store poller follows promotions, a pin stops it, a failed load keeps the old
version serving and says so (logs, /readyz, metrics). Real store, real Redis, real HTTP."""

from __future__ import annotations

import shutil
import time

import httpx
import numpy as np
import pytest
from service_support import ServerThread, delete_prefix, redis_url_or_skip, tiny_store, unique_prefix

from model_store import ModelStore
from service.config import Settings
from service.main import create_app

KEY, ADMIN = "test-key", "admin-key"


@pytest.fixture
def store(tmp_path):
    """A private copy of the tiny store (these tests move its CURRENT pointer)."""
    shared = tiny_store()
    root = tmp_path / "store"
    shutil.copytree(shared.root, root)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return ModelStore(root), shared.versions


def _broken_version(store: ModelStore, good: str, tmp_path) -> str:
    """A version the store accepts (hashes match) but the inference core refuses: popularity.npy is short."""
    folder = tmp_path / "broken"
    shutil.copytree(store.path(good), folder, ignore=shutil.ignore_patterns("manifest.json"))
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    np.save(folder / "popularity.npy", np.ones(3, np.float32))
    return store.publish(folder, {"dataset_fingerprint": "broken"})


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_poller_follows_promotions_until_pinned_and_failed_loads_keep_serving(store, tmp_path, capfd):
    st, (v1, v2) = store
    url, prefix = redis_url_or_skip(), unique_prefix()
    settings = Settings(
        home=tmp_path / "home",
        model_store=st.root,
        api_key=KEY,
        admin_api_key=ADMIN,
        model_poll_s=0.1,
        access_log=False,
        redis_url=url,
        redis_prefix=prefix,
    )
    try:
        with (
            ServerThread(create_app(settings)) as srv,
            httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as http,
        ):

            def served() -> str:
                return http.get("/model").json()["version"]

            assert served() == v1
            st.promote(v2)
            assert _wait_for(lambda: served() == v2), "the poller did not pick up the promotion"

            pin = http.post("/admin/reload", json={"version": v1}, headers={"X-API-Key": ADMIN}).json()
            assert pin == {"previous_version": v2, "version": v1, "changed": True, "pinned": True}
            time.sleep(0.5)  # five poll periods: CURRENT (v2) is not followed while v1 is pinned
            assert served() == v1 and http.get("/readyz").json()["detail"] == f"pinned to {v1}"

            unpin = http.post("/admin/reload", headers={"X-API-Key": ADMIN}).json()
            assert unpin == {"previous_version": v1, "version": v2, "changed": True, "pinned": False}

            broken = _broken_version(st, v1, tmp_path)
            st.promote(broken)
            assert _wait_for(lambda: http.get("/readyz").json()["detail"] is not None)
            ready = http.get("/readyz").json()
            assert ready["ready"] and ready["model_version"] == v2
            assert f"loading {broken} failed" in ready["detail"] and f"kept serving {v2}" in ready["detail"]
            assert served() == v2
            metrics = http.get("/metrics").text
            assert "edgerec_model_load_failing 1.0" in metrics
            assert 'edgerec_model_reloads_total{outcome="failed"} 1.0' in metrics  # tried once, not per poll
            logged = capfd.readouterr().err  # the JSON log lines
            assert "model load failed" in logged and f"kept serving {v2}" in logged

            st.promote(v1)  # CURRENT moves on: the poller loads it and the failure clears
            assert _wait_for(lambda: served() == v1)
            assert http.get("/readyz").json()["detail"] is None
            assert "edgerec_model_load_failing 0.0" in http.get("/metrics").text
    finally:
        delete_prefix(url, prefix)


def test_no_model_503_says_what_happens_next(tmp_path):
    settings = Settings(
        home=tmp_path / "home",
        model_store=tmp_path / "empty-store",
        api_key=KEY,
        access_log=False,
        redis_url=redis_url_or_skip(),
        redis_prefix=unique_prefix(),
    )
    with (
        ServerThread(create_app(settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as http,
    ):
        r = http.post("/recommend/u1", json={"k": 3})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        detail = r.json()["detail"]
        assert "no version is promoted" in detail and "checks the store every 10 s" in detail
        assert "admin/reload" not in detail  # disabled by default: not the advice to give

"""HTTP behaviour that needs no model: probes, auth, size limits, request ids, errors, metrics.

The app runs under uvicorn on a free port against the machine's Redis (unique key prefix) with an empty model
store, so every model-dependent route must answer a clear 503 rather than fail."""

from __future__ import annotations

import json

import httpx
import pytest
from service_support import ServerThread, delete_prefix, redis_url_or_skip, unique_prefix

from service.config import Settings
from service.main import create_app

API_KEY = "test-key-123"
ADMIN_KEY = "admin-key-456"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    url = redis_url_or_skip()
    prefix = unique_prefix()
    home = tmp_path_factory.mktemp("home")
    settings = Settings(
        home=home,
        redis_url=url,
        redis_prefix=prefix,
        api_key=API_KEY,
        admin_api_key=ADMIN_KEY,
        max_body_bytes=4096,
        model_poll_s=0,
    )
    with ServerThread(create_app(settings)) as srv:
        yield srv
    delete_prefix(url, prefix)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=10) as c:
        yield c


def test_liveness_and_unready_without_model(server):
    with httpx.Client(base_url=server.url, timeout=10) as anon:  # probes need no key by default
        assert anon.get("/healthz").json() == {"status": "ok"}
        r = anon.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False and body["cache"] == "ok" and "promoted" in body["detail"]


def test_model_routes_answer_503_without_model(http):
    r = http.post("/recommend/u1", json={"k": 5})
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert "no model loaded" in r.json()["detail"] and r.json()["request_id"]
    assert http.get("/model").status_code == 503
    assert http.post("/users/u1/interactions", json={"items": ["i1"]}).status_code == 503


def test_api_key_missing_and_wrong(server):
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        missing = anon.post("/recommend/u1", json={})
        wrong = anon.post("/recommend/u1", json={}, headers={"X-API-Key": "nope"})
        metrics = anon.get("/metrics")
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    assert wrong.status_code == 403 and wrong.json()["detail"] == "wrong API key"
    assert metrics.status_code == 401


def test_admin_needs_the_admin_key(http):
    assert http.post("/admin/reload").status_code == 403  # the API key is not the admin key
    r = http.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY})
    assert r.status_code == 404 and "no version" in r.json()["detail"]  # empty store: nothing to load


def test_request_id_is_echoed_or_generated(http):
    r = http.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    generated = http.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    injected = http.get("/healthz", headers={"X-Request-ID": "bad id\twith tab"}).headers["X-Request-ID"]
    assert injected != "bad id\twith tab" and len(injected) == 32


def test_body_too_large(http):
    big = {"items": ["x" * 200] * 50}
    headers = {"Content-Type": "application/json"}
    r = http.post("/users/u1/interactions", content=json.dumps(big), headers=headers)
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(10):
            yield b" " * 1000

    r = http.post("/recommend/u1", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["request_id"] == r.headers["X-Request-ID"]


def test_malformed_json_is_a_422(http):
    r = http.post("/recommend/u1", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_unknown_route_is_json_404(http):
    r = http.get("/nope")
    assert r.status_code == 404 and r.json()["request_id"] == r.headers["X-Request-ID"]


def test_metrics_exposition(http):
    http.post("/recommend/u1", json={"k": 3})  # a routed request, so the latency histogram has a series
    text = http.get("/metrics").text
    for name in (
        "edgerec_stage_seconds",
        "edgerec_request_seconds_bucket",
        "edgerec_cache_hit_ratio",
        "edgerec_fallbacks_total",
        "edgerec_batch_size",
        "edgerec_errors_total",
        "edgerec_redis_up 1.0",
    ):
        assert name in text, name
    assert 'route="/recommend/{user_id}"' in text  # latency labelled by route template, not raw path

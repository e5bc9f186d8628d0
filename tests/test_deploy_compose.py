"""docker-compose.yml: valid against the Compose Specification JSON schema (vendored under deploy/schemas/,
never downloaded at test time) and wired the way docs/deploy.md says (redis → trainer → api, gpu profile)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "deploy" / "schemas" / "compose-spec.json"
# check-jsonschema==0.39.0's vendored compose-spec.json (deploy/schemas/README.md).
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
STORE = "/var/lib/edgerec/models"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "vendored compose schema changed; see its README"
    schema = json.loads(raw)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def errors(validator, doc) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_matches_the_compose_specification(compose, validator):
    assert errors(validator, compose) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["api"]["depends_on"]["trainer"].update(condition="service_finished"),
        lambda c: c["services"]["redis"].update(helthcheck={"test": ["CMD", "true"]}),
        lambda c: c["services"]["api"].update(ports=[{"target": 8000, "publish": 8000}]),
        lambda c: c["services"]["trainer"]["volumes"][0].update(type="tmpfs-ish"),
    ],
    ids=["bad-condition", "unknown-key", "bad-port", "bad-volume-type"],
)
def test_schema_rejects_broken_variants(compose, validator, breakage):
    """The vendored schema has teeth: each of these mistakes is caught."""
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert errors(validator, broken)


def test_only_plain_variable_interpolation_is_used():
    """`${NAME}` and `${NAME:-default}` only: what tests/test_deploy_e2e.py resolves when it runs services."""
    text = COMPOSE.read_text(encoding="utf-8")
    uses = re.findall(r"\$\{[^}]*\}|\$\$|\$[A-Za-z_]", text)
    assert uses, "expected host-side settings such as ${EDGEREC_DATA_SOURCE:-./data/source}"
    for u in uses:
        assert re.fullmatch(r"\$\{[A-Z][A-Z0-9_]*(:-[^}]*)?\}", u), f"unsupported interpolation {u!r}"


def test_redis_persists_with_aof_on_a_named_volume(compose):
    redis = compose["services"]["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server" and cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "always"  # acknowledged = fsynced (docs/deploy.md)
    vol, target = redis["volumes"][0].split(":")
    assert target == "/data" and vol in compose["volumes"]
    test = redis["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "redis-cli ping" in test[1] and "PONG" in test[1]
    assert "ports" not in redis  # not reachable from outside the compose network


@pytest.mark.parametrize("trainer_name, api_name", [("trainer", "api"), ("trainer-gpu", "api-gpu")])
def test_trainer_then_api(compose, trainer_name, api_name):
    services = compose["services"]
    trainer, api = services[trainer_name], services[api_name]
    assert trainer["entrypoint"] == ["edgerec-train-once"]
    assert trainer["restart"] == "no"  # one-shot: a restart loop would retrain forever
    assert api["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        trainer_name: {"condition": "service_completed_successfully"},
    }
    assert api["command"] == ["serve"]
    assert trainer["image"] == api["image"]
    assert trainer["build"] == api["build"]
    # Both see the same model store at the path EDGEREC_MODEL_STORE names; only the trainer writes it.
    for svc, read_only in ((trainer, False), (api, True)):
        assert svc["environment"]["EDGEREC_MODEL_STORE"] == STORE
        (store,) = [v for v in svc["volumes"] if v["target"] == STORE]
        assert store["type"] == "volume" and store["source"] in compose["volumes"]
        assert bool(store.get("read_only")) is read_only
    (src,) = [v for v in trainer["volumes"] if v["type"] == "bind"]
    assert src["source"] == "${EDGEREC_DATA_SOURCE:-./data/source}"
    assert src["target"] == trainer["environment"]["EDGEREC_TRAIN_SOURCE"] == "/data/source"
    assert src["read_only"] is True and src["bind"]["create_host_path"] is False
    assert api["environment"]["EDGEREC_REDIS_URL"] == "redis://redis:6379/0"
    # Keys pass through from the host only when set there: an empty EDGEREC_API_KEY would demand an empty key.
    assert api["environment"]["EDGEREC_API_KEY"] is None
    assert api["environment"]["EDGEREC_ADMIN_API_KEY"] is None
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_gpu_profile_reserves_a_gpu_and_leaves_the_default_stack_alone(compose):
    services = compose["services"]
    for name in ("redis", "trainer", "api"):
        assert "profiles" not in services[name]
    for name in ("trainer-gpu", "api-gpu"):
        svc = services[name]
        assert svc["profiles"] == ["gpu"]
        assert svc["build"]["dockerfile"] == "Dockerfile.gpu"
        (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"] and dev["count"] >= 1
    for name in ("trainer", "api"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
        assert "deploy" not in services[name]
    # Both APIs may run side by side: different host ports.
    host_port = {n: services[n]["ports"][0].split(":")[0] for n in ("api", "api-gpu")}
    assert host_port["api"] != host_port["api-gpu"]


def test_every_host_side_variable_is_documented(compose):
    """Each `${VAR}` of the compose file and each variable it passes through from the host has a row in
    docs/deploy.md's table, so an operator can find every knob."""
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    names = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text(encoding="utf-8")))
    for svc in compose["services"].values():
        names |= {k for k, v in svc.get("environment", {}).items() if v is None}
    assert {"EDGEREC_DATA_SOURCE", "EDGEREC_API_KEY", "EDGEREC_TRAIN_ARGS"} <= names
    for name in sorted(names):
        assert f"| `{name}`" in doc or f"`{name}` /" in doc or f"/ `{name}`" in doc, (
            f"{name} not in docs/deploy.md"
        )


def test_retrain_profile_reads_the_apis_redis_and_writes_the_shared_store(compose):
    services = compose["services"]
    retrain, api, trainer = services["retrain"], services["api"], services["trainer"]
    assert retrain["profiles"] == ["retrain"]  # `docker compose up` never starts it
    assert retrain["entrypoint"][:2] == ["edgerec", "retrain"]  # flags after `run --rm retrain` are appended
    assert "command" not in retrain
    assert retrain["restart"] == "no"  # one-shot: scheduled from outside (cron), never a restart loop
    assert retrain["image"] == api["image"] and retrain["build"] == api["build"]
    assert retrain["depends_on"] == {"redis": {"condition": "service_healthy"}}
    # the same Redis (and prefix: unset in both, so the default) the api writes the stream to
    assert retrain["environment"]["EDGEREC_REDIS_URL"] == api["environment"]["EDGEREC_REDIS_URL"]
    assert "EDGEREC_REDIS_PREFIX" not in retrain["environment"] | api["environment"]
    assert retrain["environment"]["EDGEREC_MODEL_STORE"] == STORE
    (store,) = [v for v in retrain["volumes"] if v["target"] == STORE]
    assert store["source"] == "models" and not store.get("read_only")  # publishes and promotes
    # --dataset names the folder the trainer prepared the first version from
    (src,) = [v for v in retrain["volumes"] if v["type"] == "bind"]
    (trainer_src,) = [v for v in trainer["volumes"] if v["type"] == "bind"]
    assert src == trainer_src
    args = retrain["entrypoint"]
    assert args[args.index("--dataset") + 1] == src["target"]

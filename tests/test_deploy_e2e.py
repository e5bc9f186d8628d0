"""docker-compose.yml without a container engine: the `redis`, `trainer` and `api` services' exact commands
and environments (compose file + the image's ENV/ENTRYPOINT from ./Dockerfile) run as plain processes, volumes
mapped to temporary folders; then a recommendation is fetched over HTTP.

Differences from a real `docker compose up`, all explicit below: container paths are mapped onto temporary
folders, `redis:6379` onto a redis-server started here on a free port, and the API binds 127.0.0.1 on a free
port instead of 0.0.0.0:8000 (the probe and port tests check the 8000 wiring). The training set is a slice of
Amazon Office from ../shared/datasets; the trainer recipe is made tiny through EDGEREC_TRAIN_ARGS, which
compose passes through from the host as an operator would set it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from shared_data import DATASETS

ROOT = Path(__file__).resolve().parents[1]
SHARED = DATASETS / "amazon-office"
N_USERS = 400  # first users of Amazon Office: ~110 users and ~150 items survive 5-core; trains in seconds
# A deliberately tiny recipe (flags of `edgerec train`); quality is not the point here, the wiring is.
TINY_TRAIN_ARGS = " ".join(
    f"--set {kv}"
    for kv in (
        "n_layer=1",
        "n_embd=32",
        "n_head=2",
        "word_vocab=300",
        "pretrain_rounds=1",
        "content_warmup=0",
        "epochs=1",
        "patience=1",
        "max_eval_users=50",
        "eval_batch=64",
    )
)
VAR = re.compile(r"\$\{(?P<name>[A-Z][A-Z0-9_]*)(?::-(?P<default>[^}]*))?\}")


# ---------------------------------------------------------------- compose semantics (the subset used)
def interpolate(value: Any, host_env: dict[str, str]) -> Any:
    """Compose's `${NAME}` / `${NAME:-default}` (test_deploy_compose.py checks no other form is used)."""
    if isinstance(value, str):
        return VAR.sub(lambda m: host_env.get(m["name"]) or (m["default"] or ""), value)
    if isinstance(value, list):
        return [interpolate(v, host_env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, host_env) for k, v in value.items()}
    return value


def container_env(
    service: dict[str, Any], image_env: dict[str, str], host_env: dict[str, str]
) -> dict[str, str]:
    """Image ENV, overridden by the service's environment; a key without a value passes the host's through."""
    env = dict(image_env)
    for k, v in service.get("environment", {}).items():
        if v is None:
            if k in host_env:
                env[k] = host_env[k]
        else:
            env[k] = str(v)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Image:
    """What ./Dockerfile's runtime stage defines: ENV, ENTRYPOINT, WORKDIR and the scripts it installs."""

    def __init__(self, dockerfile: Path) -> None:
        parser = DockerfileParser(fileobj=open(dockerfile, "rb"))  # noqa: SIM115
        self.env = {k: v for k, v in parser.envs.items() if k != "PATH"}
        ins = [i for i in parser.structure if i["instruction"] != "COMMENT"]
        last_from = max(n for n, i in enumerate(ins) if i["instruction"] == "FROM")
        runtime = ins[last_from:]
        self.entrypoint = json.loads(next(i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"))
        self.workdir = [i["value"] for i in runtime if i["instruction"] == "WORKDIR"][-1]
        self.installed: dict[str, Path] = {}  # in-image path -> repo file, for COPY of a repo file
        for i in runtime:
            parts = [p for p in shlex.split(i["value"]) if not p.startswith("--")]
            if i["instruction"] == "COPY" and "--from=" not in i["value"] and len(parts) == 2:
                self.installed[parts[1]] = ROOT / parts[0]


class Mapper:
    """Container path → temporary folder, longest prefix first."""

    def __init__(self, mounts: dict[str, Path]) -> None:
        self.mounts = sorted(mounts.items(), key=lambda kv: -len(kv[0]))

    def path(self, value: str) -> str:
        for prefix, host in self.mounts:
            if value == prefix or value.startswith(prefix + "/"):
                return str(host) + value[len(prefix) :]
        return value


def resolve_command(argv: list[str], image: Image, bin_dir: Path) -> list[str]:
    exe = argv[0]
    for in_image, repo_file in image.installed.items():
        if exe in (in_image, Path(in_image).name) and "bin" in in_image:
            return ["sh", str(repo_file), *argv[1:]]
    found = shutil.which(exe, path=str(bin_dir))
    assert found, f"{exe} is not installed in {bin_dir} (pip install -e .)"
    return [found, *argv[1:]]


def slice_office(dest: Path) -> None:
    """The first N_USERS users' rows of the shared Amazon Office (RecBole atomic files) plus the item text."""
    dest.mkdir(parents=True)
    lines = (SHARED / "amazon-office.inter").read_text(encoding="utf-8").splitlines()
    users: set[str] = set()
    keep = []
    for line in lines[1:]:
        user = line.split("\t", 1)[0]
        if user not in users and len(users) >= N_USERS:
            continue
        users.add(user)
        keep.append(line)
    (dest / "office-slice.inter").write_text("\n".join([lines[0], *keep]) + "\n", encoding="utf-8")
    shutil.copy(SHARED / "amazon-office.item", dest / "office-slice.item")


def wait_healthy(
    cmd: list[str], env: dict[str, str], proc: subprocess.Popen, timeout_s: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        if subprocess.run(cmd, env=env, capture_output=True, timeout=30, check=False).returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"not healthy after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- the test
def test_compose_trainer_then_api_serve_a_recommendation(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: the shared Amazon Office data is needed for this end-to-end test")
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server not on PATH (Debian package redis-server)")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    image = Image(ROOT / "Dockerfile")
    bin_dir = Path(sys.executable).parent

    # The host environment as an operator would set it (compose passes these through); no other EDGEREC_*.
    host_env = {"EDGEREC_TRAIN_ARGS": TINY_TRAIN_ARGS, "EDGEREC_API_KEY": "e2e-key"}
    services = {n: interpolate(s, host_env) for n, s in compose["services"].items()}
    volumes = {name: tmp_path / "volumes" / name for name in compose["volumes"]}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEREC_", "REDIS"))}
    base_env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"

    def mounts_of(name: str) -> dict[str, Path]:
        """Each service's own filesystem (its WORKDIR, /tmp) plus its volumes, as temporary folders."""
        service = services[name]
        mounts = {"/tmp": tmp_path / name / "tmp", image.workdir: tmp_path / name / "home"}
        for v in service.get("volumes", []):
            if isinstance(v, str):
                src, target = v.split(":")[:2]
                v = {"type": "volume" if src in volumes else "bind", "source": src, "target": target}
            if v["type"] == "volume":
                mounts[v["target"]] = volumes[v["source"]]
            else:
                source = Path(v["source"])
                mounts[v["target"]] = source if source.is_absolute() else (ROOT / source).resolve()
        for host in mounts.values():
            host.mkdir(parents=True, exist_ok=True)
        return mounts

    # --- redis: the service's own command, on a free loopback port, data in its named volume
    redis_port = free_port()
    redis_mounts = mounts_of("redis")
    redis_cmd = [redis_server, *services["redis"]["command"][1:]]
    redis_cmd += ["--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(redis_mounts["/data"])]
    redis_log = tmp_path / "redis.log"
    redis_proc = subprocess.Popen(redis_cmd, stdout=open(redis_log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        health = services["redis"]["healthcheck"]["test"][1].replace(
            "redis-cli", f"redis-cli -p {redis_port}"
        )
        wait_healthy(["sh", "-c", health], base_env, redis_proc, 30, redis_log)
        assert (redis_mounts["/data"]).is_dir()

        # --- trainer: its source folder is the data slice (EDGEREC_DATA_SOURCE would point here on a host)
        trainer = services["trainer"]
        (src,) = [v for v in trainer["volumes"] if v["type"] == "bind"]
        assert src["source"] == "./data/source"  # the documented default, before we redirect it
        data_source = tmp_path / "data-source"
        slice_office(data_source)
        src["source"] = str(data_source)
        t_mounts = mounts_of("trainer")
        t_map = Mapper(t_mounts)
        t_env = {
            **base_env,
            **{k: t_map.path(v) for k, v in container_env(trainer, image.env, host_env).items()},
        }
        t_cmd = resolve_command(trainer.get("entrypoint") or image.entrypoint, image, bin_dir)
        t_cwd = t_mounts[image.workdir]
        first = subprocess.run(
            t_cmd, env=t_env, cwd=t_cwd, capture_output=True, text=True, timeout=900, check=False
        )
        assert first.returncode == 0, f"trainer failed:\n{first.stdout[-3000:]}\n{first.stderr[-5000:]}"
        store = volumes["models"]
        current = (store / "CURRENT").read_text().strip()
        assert (store / "versions" / current / "manifest.json").is_file()

        # Again, as every `docker compose up` does: a promoted model exists, so nothing is trained.
        again = subprocess.run(
            t_cmd, env=t_env, cwd=t_cwd, capture_output=True, text=True, timeout=300, check=False
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert "nothing to do" in again.stderr
        assert (store / "CURRENT").read_text().strip() == current
        assert len(list((store / "versions").iterdir())) == 1

        # --- api: `edgerec serve` with the service's environment; redis:6379 is our redis-server
        api = services["api"]
        a_map = Mapper(mounts_of("api"))
        a_env = container_env(api, image.env, host_env)
        assert a_env["EDGEREC_REDIS_URL"] == "redis://redis:6379/0"
        a_env["EDGEREC_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        api_port = free_port()
        a_env["EDGEREC_PORT"], a_env["EDGEREC_HOST"] = str(api_port), "127.0.0.1"
        a_env = {**base_env, **{k: a_map.path(v) for k, v in a_env.items()}}
        a_cmd = resolve_command(image.entrypoint, image, bin_dir) + list(api["command"])
        api_log = tmp_path / "api.log"
        api_proc = subprocess.Popen(
            a_cmd,
            env=a_env,
            cwd=a_map.path(image.workdir),
            stdout=open(api_log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            # The compose healthcheck itself (readiness), pointed at the port we bound.
            check = [a_map.path(c) for c in api["healthcheck"]["test"][1:]]
            check = [c.replace(":8000/", f":{api_port}/") for c in check]
            check[0] = shutil.which(check[0], path=str(bin_dir)) or check[0]
            wait_healthy(check, a_env, api_proc, 180, api_log)
            # The image's HEALTHCHECK (liveness) reads EDGEREC_PORT, so it works unchanged.
            parser = DockerfileParser(fileobj=open(ROOT / "Dockerfile", "rb"))  # noqa: SIM115
            hc = next(i["value"] for i in parser.structure if i["instruction"] == "HEALTHCHECK")
            hc_cmd = json.loads(hc[hc.index("CMD") + 3 :].strip())
            hc_cmd[0] = shutil.which(hc_cmd[0], path=str(bin_dir))
            assert subprocess.run(hc_cmd, env=a_env, timeout=30, check=False).returncode == 0

            user = json.loads((store / "versions" / current / "user_ids.json").read_text())[0]
            base = f"http://127.0.0.1:{api_port}"
            with httpx.Client(base_url=base, timeout=60) as http:
                assert http.post(f"/recommend/{user}", json={"k": 5}).status_code == 401  # key passed through
                r = http.post(f"/recommend/{user}", json={"k": 5}, headers={"X-API-Key": "e2e-key"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["model_version"] == current
                assert 1 <= len(body["items"]) <= 5
                ids = [it["id"] for it in body["items"]]
                assert len(set(ids)) == len(ids)
                ready = http.get("/readyz").json()
                assert ready["ready"] is True and ready["cache"] == "ok"
        finally:
            stop(api_proc)
    finally:
        stop(redis_proc)

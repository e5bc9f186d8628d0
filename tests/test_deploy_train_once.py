"""scripts/train_once.sh (the compose trainer and Kubernetes Job entry point) decides rightly whether to
train, with the real `edgerec` CLI and a real model store. Training itself runs in tests/test_deploy_e2e.py;
here the source is missing on purpose: a run that decides to train stops at `edgerec data prepare`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_once.sh"


def run(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEREC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        EDGEREC_HOME=str(tmp_path / "home"),
        EDGEREC_MODEL_STORE=str(tmp_path / "models"),
        EDGEREC_TRAIN_SOURCE=str(tmp_path / "no-such-source"),
        OMP_NUM_THREADS="1",
        **extra,
    )
    return subprocess.run(
        ["sh", str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def promoted(tmp_path: Path) -> tuple[ModelStore, str]:
    folder = tmp_path / "version"
    folder.mkdir()
    (folder / "item_embeddings.npy").write_bytes(b"\x00" * 64)
    store = ModelStore(tmp_path / "models")
    version = store.publish(folder)
    store.promote(version)
    return store, version


def test_does_nothing_when_a_promoted_version_verifies(tmp_path, promoted):
    _, version = promoted
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stderr and version in proc.stderr
    assert not (tmp_path / "home" / "bootstrap").exists()  # not even a work folder


def test_trains_when_the_store_is_empty(tmp_path):
    proc = run(tmp_path)
    # `edgerec data prepare`'s bad-input exit code, passed on by `set -e`.
    assert proc.returncode == 2, proc.stderr
    assert "no promoted model" in proc.stderr
    assert "no-such-source" in proc.stderr
    assert not (tmp_path / "models" / "CURRENT").exists()


def test_retrains_when_the_promoted_version_is_damaged(tmp_path, promoted):
    store, version = promoted
    damaged = store.path(version) / "item_embeddings.npy"
    damaged.chmod(0o644)
    damaged.write_bytes(b"\x01" * 64)
    proc = run(tmp_path)
    assert proc.returncode != 0
    assert "no promoted model that verifies" in proc.stderr and "no-such-source" in proc.stderr


def test_force_retrains_even_with_a_good_promoted_version(tmp_path, promoted):
    proc = run(tmp_path, EDGEREC_TRAIN_FORCE="1")
    assert proc.returncode != 0
    assert "nothing to do" not in proc.stderr and "no-such-source" in proc.stderr

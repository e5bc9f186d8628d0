"""`edgerec serve` and `edgerec demo` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_support import delete_prefix, free_port, redis_url_or_skip, tiny_store, unique_prefix

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, url: str, prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        EDGEREC_HOME=str(tmp_path / "home"),
        EDGEREC_MODEL_STORE=str(tiny_store().root),
        EDGEREC_REDIS_URL=url,
        EDGEREC_REDIS_PREFIX=prefix,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    env.pop("EDGEREC_API_KEY", None)
    return env


def test_serve_answers_and_stops_cleanly(tmp_path):
    url, prefix = redis_url_or_skip(), unique_prefix()
    store = tiny_store()
    port = free_port()
    cmd = [sys.executable, "-m", "edgerec.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=_env(tmp_path, url, prefix), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.3)
        r = httpx.post(f"http://127.0.0.1:{port}/recommend/{store.user_ids[0]}", json={"k": 3})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM)
        assert proc.returncode in (0, -signal.SIGTERM), out.decode()[-2000:]
        assert b"Application shutdown complete" in out
        assert b'"msg":"serving model"' in out  # structured JSON logs
    finally:
        if proc.poll() is None:
            proc.kill()
        delete_prefix(url, prefix)


def test_demo_with_a_promoted_model(tmp_path):
    """With a promoted model the demo skips training: it serves, asks over HTTP, prints and exits."""
    url, prefix = redis_url_or_skip(), unique_prefix()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgerec.cli", "demo"],
            env=_env(tmp_path, url, prefix),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        delete_prefix(url, prefix)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "promoted version" in out and "top 10 for user" in out
    assert "cold_start_context" in out and "demo done" in out
    assert "added demo-new-item" in out and "demo-new-item ranks #" in out  # the added item is served
    assert "why demo-new-item" in out and "similar text to" in out  # and explained by its text


def test_serving_an_onnx_version_imports_no_torch(tmp_path):
    """The service answers from ONNX Runtime + FAISS alone: neither torch nor training/ is imported."""
    code = (
        "import sys\n"
        "from service.config import Settings\n"
        "from service.serving import load_serving_model\n"
        "import service.main\n"
        f"m = load_serving_model(Settings(model_store={str(tiny_store().root)!r}), 'current')\n"
        "heavy = ('torch', 'training', 'transformers', 'inference.torch_model')\n"
        "heavy = sorted(x for x in heavy if x in sys.modules)\n"
        "print(type(m.encoder).__name__, heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "OnnxEncoder []"

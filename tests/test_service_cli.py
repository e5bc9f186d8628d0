"""`edgerec serve` and `edgerec demo` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


def _serve(tmp_path: Path, url: str, prefix: str, *args: str, env: dict | None = None):
    """``edgerec serve`` on a free port, once /readyz says ready: (process, base URL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "edgerec.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    full_env = _env(tmp_path, url, prefix) | (env or {})
    # its own process group, so _kill also reaches uvicorn's worker processes
    proc = subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            raise AssertionError("serve did not become ready: " + proc.communicate()[0].decode()[-2000:])
        time.sleep(0.3)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the server and every process it started (a failed test must not leave workers behind)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_serve_answers_and_stops_cleanly(tmp_path):
    url, prefix = redis_url_or_skip(), unique_prefix()
    store = tiny_store()
    proc, base = _serve(tmp_path, url, prefix)
    try:
        r = httpx.post(f"{base}/recommend/{store.user_ids[0]}", json={"k": 3})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM)
        assert proc.returncode in (0, -signal.SIGTERM), out.decode()[-2000:]
        assert b"Application shutdown complete" in out
        assert b'"msg":"serving model"' in out  # structured JSON logs
    finally:
        _kill(proc)
        delete_prefix(url, prefix)


def _sample(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a Prometheus text exposition."""
    (value,) = [ln.split()[-1] for ln in text.splitlines() if ln.split(" ")[0] == name]
    return float(value)


def test_serve_with_two_workers_merges_their_metrics(tmp_path):
    """With --workers 2 every scrape of /metrics, whichever worker answers it, counts all workers' hits."""
    url, prefix = redis_url_or_skip(), unique_prefix()
    store = tiny_store()
    folder = tmp_path / "prom"
    (folder).mkdir()
    (folder / "counter_1.db").write_bytes(b"stale")  # an earlier run's values must not be summed in
    proc, base = _serve(
        tmp_path, url, prefix, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    )
    try:
        assert not (folder / "counter_1.db").exists()
        users = [store.user_ids[n % len(store.user_ids)] for n in range(40)]

        def ask(user: str) -> int:  # a new connection per request, so both workers take some
            return httpx.post(f"{base}/recommend/{user}", json={"k": 3}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(ask, users)) == [200] * len(users)
        pids = {p.stem.split("_")[-1] for p in folder.glob("counter_*.db")}
        assert len(pids) == 2, sorted(folder.iterdir())  # both workers keep their values there
        for _ in range(12):  # new connections: the scrapes reach either worker
            text = httpx.get(f"{base}/metrics", timeout=10).text
            assert _sample(text, "edgerec_recommendations_total") == len(users)
            assert 0.0 <= _sample(text, "edgerec_cache_hit_ratio") <= 1.0
            assert f'edgerec_model_info{{version="{store.versions[0]}"}} 1.0' in text
            assert _sample(text, "edgerec_redis_up") == 1.0
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM), out.decode()[-2000:]
    finally:
        _kill(proc)
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

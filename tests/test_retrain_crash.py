"""``edgerec retrain`` as the process it is in production: a subprocess against a Redis server of its own
(``RedisProc``), SIGKILLed in each phase and run again; and its command-line errors.

The ``EDGEREC_RETRAIN_PAUSE_AT`` hook stops the retrain right after a phase (reading; training; publishing,
before the checkpoint advances) until a line arrives on stdin, so the kill lands in that phase every time.
Exactly once is checked against Redis itself: the ranges the published versions record, read back with
XRANGE, hold every acknowledged stream entry once, and the last snapshot holds every interaction once.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis_procs import RedisProc
from service_support import tiny_store, unique_prefix
from test_retrain import SHARDS, _overlap, _pairs, interactions, new_traffic, write
from typer.testing import CliRunner

from edgerec.cli import app
from edgerec.retrain import FAIL_ENV, PAUSE_ENV, load_checkpoint
from model_store import ModelStore
from service.metrics import RETRAIN_STATUS_FILE
from training.data.dataset import PreparedDataset

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 300  # a paused phase is reached after imports and a tiny fine-tune; generous for a busy machine


@pytest.fixture
def world(tmp_path):
    import json

    server = RedisProc(tmp_path / "redis").start()
    root = tmp_path / "store"
    shutil.copytree(tiny_store().root, root)
    yield {"url": server.url, "root": root, "prefix": unique_prefix(), "json": json}
    server.stop()


class Retrain:
    """One ``edgerec retrain`` process; stderr is read by a thread so a pause marker can be waited for."""

    def __init__(self, world: dict, pause: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k not in (FAIL_ENV, PAUSE_ENV)}
        env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        if pause:
            env[PAUSE_ENV] = pause
        cmd = [
            sys.executable, "-m", "edgerec.cli", "retrain",
            "--store", str(world["root"]), "--redis-url", world["url"], "--prefix", world["prefix"],
            "--stream-shards", str(SHARDS), "--epochs", "1", "--tolerance", "1.0", "--min-holdout", "1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)
        self.lines.put("")  # EOF

    def wait_paused(self, point: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith(f"{PAUSE_ENV}={point}: paused"):
                return
            if line == "":
                break
        self.proc.kill()
        pytest.fail(f"retrain never paused at {point}; stderr:\n{''.join(self.err)}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def finish(self, resume: bool = False) -> str:
        """Let it run to the end (past a pause when ``resume``); its stdout, after checking exit 0."""
        if resume:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        out, _ = self.proc.communicate(timeout=WAIT_S)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}: {''.join(self.err)}\n{out}"
        return out


def versions(store: ModelStore) -> list[str]:
    return [row.version for row in store.list()]


def range_ids(r: redis.Redis, shards: dict) -> set[str]:
    """The stream ids a version's recorded range covers, read back from Redis: per shard (after, upper]."""
    out = set()
    for key, s in shards.items():
        if s["upper"] != s["after"]:
            out |= {sid.decode() for sid, _ in r.xrange(key, f"({s['after']}", s["upper"])}
    return out


def test_retrain_sigkilled_in_each_phase_then_rerun_learns_every_interaction_exactly_once(world):
    store = ModelStore(world["root"])
    state = world["root"] / "retrain"
    tiny = tiny_store()
    first, served = versions(store), store.current()
    a = new_traffic(tiny, 10)
    acked = write(world["url"], world["prefix"], a)

    # SIGKILL after reading, after training, after publishing (before the checkpoint advances)
    for point in ("read", "train", "publish"):
        job = Retrain(world, pause=point)
        job.wait_paused(point)
        job.kill9()
        assert load_checkpoint(state).positions == {}, point  # nothing advanced
        published = [v for v in versions(store) if v not in first]
        assert len(published) == (1 if point == "publish" else 0), point
    assert store.current() == served  # the killed retrains promoted nothing

    out = Retrain(world).finish()  # the rerun completes the published retrain without training again
    assert "already learned from the range" in out and "promoted" in out
    (v1,) = [v for v in versions(store) if v not in first]
    assert store.current() == v1 and load_checkpoint(state).version == v1
    assert not (state / "runs").exists() and not (state / "exports").exists()  # the kills' debris is gone

    # traffic written while a retrain runs (after its read) waits for the next retrain
    b = new_traffic(tiny, 6, start=10)
    acked += write(world["url"], world["prefix"], b)
    job = Retrain(world, pause="read")
    job.wait_paused("read")
    c = new_traffic(tiny, 4, start=16)
    late = write(world["url"], world["prefix"], c)
    acked += late
    job.finish(resume=True)
    v2 = load_checkpoint(state).version
    # and a retrain of that late traffic killed in training, then rerun
    job = Retrain(world, pause="train")
    job.wait_paused("train")
    job.kill9()
    assert load_checkpoint(state).version == v2
    Retrain(world).finish()
    v3 = load_checkpoint(state).version
    assert "nothing new since" in Retrain(world).finish()

    r = redis.Redis.from_url(world["url"])
    ranges = {v: store.manifest(v).extra["retrain"]["stream"] for v in (v1, v2, v3)}
    assert [ranges[v]["interactions"] for v in (v1, v2, v3)] == [interactions(x) for x in (a, b, c)]
    ids = {v: range_ids(r, s["shards"]) for v, s in ranges.items()}
    assert ids[v3] == set(late)  # what arrived during v2's retrain is v3's, not v2's
    assert sum(len(x) for x in ids.values()) == len(set().union(*ids.values()))  # no entry twice
    assert set().union(*ids.values()) == set(acked)  # none lost
    in_redis = sum(r.xlen(k) for k in ranges[v1]["shards"])
    assert in_redis == len(acked)
    snap = PreparedDataset.load(store.manifest(v3).extra["retrain"]["dataset_dir"])
    pairs = _pairs(snap, ("train", "valid", "test"))
    assert all((u, i) in pairs for u, items in a + b + c for i in items)
    assert _overlap(snap) == 0  # each interaction in one split only


def _cli(*args: str) -> tuple[int, str]:
    env = {"COLUMNS": "200", FAIL_ENV: None, PAUSE_ENV: None, "EDGEREC_REDIS_URL": None}
    res = CliRunner().invoke(app, ["retrain", *args], env=env)
    return res.exit_code, res.output


def test_retrain_cli_says_plainly_when_redis_is_unreachable(world):
    server_down = RedisProc(world["root"].parent / "gone")  # a free port nobody listens on
    url = f"redis://:s3cret@127.0.0.1:{server_down.port}/0"
    code, out = _cli("--store", str(world["root"]), "--redis-url", url, "--prefix", world["prefix"])
    assert code == 2
    assert "error: Redis at redis://:***@127.0.0.1" in out and "unreachable" in out
    assert "checkpoint is unchanged" in out and "s3cret" not in out and "Traceback" not in out
    status = world["json"].loads((world["root"] / RETRAIN_STATUS_FILE).read_text())
    assert status["status"] == "failed" and status["ok"] is False and "s3cret" not in status["error"]


def test_retrain_cli_says_plainly_when_the_store_has_no_served_version(tmp_path, world):
    code, out = _cli("--store", str(tmp_path / "nowhere"), "--redis-url", world["url"])
    assert code == 2 and "no version has been promoted" in out and "does not exist: check --store" in out
    (tmp_path / "empty").mkdir()
    code, out = _cli("--store", str(tmp_path / "empty"), "--redis-url", world["url"])
    assert code == 2 and "edgerec export --promote" in out and "does not exist" not in out
    code, out = _cli("--store", str(world["root"]))
    assert code == 2 and "no Redis: pass --redis-url or set EDGEREC_REDIS_URL" in out

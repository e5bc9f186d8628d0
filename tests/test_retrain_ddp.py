"""``edgerec retrain`` under ``torchrun`` (what k8s/overlays/retrain-multinode runs on N nodes), here as two
processes on one machine (gloo on CPU): rank 0 reads the stream, publishes and advances the checkpoint; rank 1
only joins the fine-tune; and a run with nothing new releases rank 1 at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_retrain import SHARDS, env, interactions, new_traffic, write  # noqa: F401 (env: the fixture)

from edgerec.retrain import FAIL_ENV, PAUSE_ENV, load_checkpoint
from model_store import ModelStore

ROOT = Path(__file__).resolve().parents[1]


def torchrun(world: dict, nproc: int = 2) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in (FAIL_ENV, PAUSE_ENV)}
    environ |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "edgerec.cli", "retrain",
        "--store", str(world["root"]), "--redis-url", world["url"], "--prefix", world["prefix"],
        "--stream-shards", str(SHARDS), "--epochs", "1", "--tolerance", "1.0", "--min-holdout", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_retrain_under_torchrun_two_ranks_rank0_alone_reads_publishes_and_advances(env):  # noqa: F811 (the fixture)
    store = ModelStore(env["root"])
    before = [row.version for row in store.list()]
    a = new_traffic(env["tiny"], 10)
    write(env["url"], env["prefix"], a)
    out = torchrun(env).stdout
    (new,) = [row.version for row in store.list() if row.version not in before]  # one version, not two
    assert store.current() == new and load_checkpoint(env["root"] / "retrain").version == new
    extra = store.manifest(new).extra["retrain"]
    assert extra["world_size"] == 2
    assert extra["stream"]["entries"] == len(a) and extra["stream"]["interactions"] == interactions(a)
    assert out.count("read ") == 1  # only rank 0 read the stream
    assert "rank 1: fine-tune done" in out
    log = [ln for ln in (env["root"] / "retrain").rglob("log.jsonl")]
    assert not log  # the run folder was removed after the publish

    again = torchrun(env).stdout  # nothing new: rank 0 says so, rank 1 is released without training
    assert "nothing new since" in again and "rank 1: nothing to train" in again
    assert [row.version for row in store.list() if row.version not in before] == [new]

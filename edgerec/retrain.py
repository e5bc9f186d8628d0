"""``edgerec retrain``: learn from the interactions the service acknowledged since the last retrain.

One retrain, in order (docs/deploy.md, "Retraining from the stream"):

1. **read** every interaction stream shard from the checkpoint's position up to each shard's last id at that
   moment (``service.stream_reader``); what arrives later waits for the next retrain;
2. **snapshot**: the served version's dataset + the new interactions, newest one per user held out
   (``training.data.snapshot``), saved under the state folder;
3. **train**: the served version's weights, new rows from their neighbours, a short fine-tune
   (``training.recipe.warm_start``), exported like any run;
4. **gate**: served and candidate scored on the holdout with one protocol (``training.evaluation.holdout``);
5. **publish** the candidate, its manifest's ``extra.retrain`` recording the stream range (per shard: after,
   upper, first, last, count), the gate and the snapshot; **promote** it if the gate passed;
6. **advance** the checkpoint (``<state>/checkpoint.json``: per shard, the last id learned from; temp file,
   fsync, rename).

Exactly once: the checkpoint moves only after the publish, and a rerun first looks for a version whose
manifest starts at the checkpoint's position: one found was published but not advanced, so it is promoted
(if its gate passed and the served version is still its base) and the checkpoint advances without
retraining. A crash anywhere before leaves the checkpoint where it was, so the rerun reads the same range.

``EDGEREC_RETRAIN_FAIL_AT=read|train|publish`` is a **test hook**: the retrain raises right after that step
(after reading; after training; after publishing, before the checkpoint advances), as a crash there would.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from model_store.cli import STORE_OPTION

FAIL_ENV = "EDGEREC_RETRAIN_FAIL_AT"
FAIL_POINTS = ("read", "train", "publish")
CHECKPOINT_FILE = "checkpoint.json"
DEFAULT_TOLERANCE = 0.02
GATE_METRIC = "recall@20"
EXIT_FAILED = 2


class RetrainError(RuntimeError):
    """A retrain cannot run (no served version, no Redis, wrong dataset, another retrain running, ...)."""


class InjectedFailure(RuntimeError):
    """Raised by the ``EDGEREC_RETRAIN_FAIL_AT`` test hook."""


def _hook(point: str) -> None:
    if os.environ.get(FAIL_ENV) == point:
        raise InjectedFailure(f"{FAIL_ENV}={point}: retrain stopped after {point} (test hook)")


# ------------------------------------------------------------------------------------------ checkpoint
@dataclass
class Checkpoint:
    positions: dict[str, str] = field(default_factory=dict)  # stream key -> last id learned from
    version: str | None = None  # the version published from the range that ended here
    updated_at: str | None = None

    def describe(self) -> str:
        if not self.positions:
            return "the start of the stream (no checkpoint yet)"
        moved = {k: v for k, v in self.positions.items() if v != "0-0"}
        return (
            f"checkpoint {self.updated_at or '?'} (version {self.version or '-'}, {len(moved)} shard(s) read)"
        )


def load_checkpoint(state_dir: Path) -> Checkpoint:
    path = state_dir / CHECKPOINT_FILE
    if not path.exists():
        return Checkpoint()
    try:
        doc = json.loads(path.read_text())
        return Checkpoint(dict(doc["positions"]), doc.get("version"), doc.get("updated_at"))
    except (ValueError, KeyError, TypeError) as exc:
        raise RetrainError(
            f"{path} is corrupt ({exc}); restore it or remove it to re-read the stream"
        ) from exc


def save_checkpoint(state_dir: Path, ck: Checkpoint) -> None:
    """Atomically: temp file in the same folder, fsync, rename, fsync the folder."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ck.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc = {"positions": ck.positions, "version": ck.version, "updated_at": ck.updated_at}
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", dir=state_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state_dir / CHECKPOINT_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainError(
                f"another retrain holds {state_dir / '.lock'}; one retrain at a time"
            ) from None
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ pieces
def redis_client(url: str):
    import redis

    if url.startswith("redis+cluster://"):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"))
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)


def _full(positions: dict[str, str], keys: list[str]) -> dict[str, str]:
    return {k: positions.get(k, "0-0") for k in keys}


def find_published(store, after: dict[str, str]) -> str | None:
    """The newest version whose manifest says it learned from the range starting at ``after``."""
    for vid in reversed([row.version for row in store.list()]):
        try:
            extra = store.manifest(vid).extra
        except Exception:  # an unreadable manifest is not ours to judge here
            continue
        r = extra.get("retrain") if isinstance(extra, dict) else None
        if r and {k: v["after"] for k, v in r["stream"]["shards"].items()} == after:
            return vid
    return None


def base_dataset(store, version: str, dataset: str | None):
    """The served version's prepared dataset, checked against its export.json fingerprint."""
    from inference.version import EXPORT_INFO_FILE
    from training.data.sources import load_dataset

    folder = store.path(version)
    info = json.loads((folder / EXPORT_INFO_FILE).read_text())
    recorded = store.manifest(version).extra.get("retrain", {}).get("dataset_dir")
    candidates = [dataset] if dataset else []
    if recorded:
        candidates.append(recorded)
    run_cfg = Path(info.get("run_dir", "")) / "train_config.json"
    if info.get("run_dir") and run_cfg.is_file():
        candidates.append(json.loads(run_cfg.read_text())["dataset"])
    candidates.append(info["dataset"])  # a prepared dataset's name under $EDGEREC_HOME/data
    tried = []
    for spec in candidates:
        try:
            data = load_dataset(str(spec))
        except (FileNotFoundError, ValueError) as exc:
            tried.append(f"{spec}: {exc}")
            continue
        if data.fingerprint == info["dataset_fingerprint"]:
            return data, str(spec)
        tried.append(f"{spec}: fingerprint {data.fingerprint[:12]} != {info['dataset_fingerprint'][:12]}")
    raise RetrainError(
        f"cannot find the dataset version {version} was trained on; pass the prepared folder with --dataset "
        "(tried " + "; ".join(tried) + ")"
    )


def lineage_dataset(store, served: str, ck: Checkpoint, dataset: str | None, echo):
    """The dataset the new snapshot extends: the snapshot of the last retrain (the checkpoint's version),
    promoted or not, so that what a gate refused is still learned from by the next retrain; else (no retrain
    yet, or the served version is not its ancestor) the served version's own dataset."""
    from training.data.dataset import PreparedDataset

    if ck.version and not dataset:
        try:
            snap_dir = store.manifest(ck.version).extra["retrain"]["dataset_dir"]
            data = PreparedDataset.load(snap_dir)
        except Exception as exc:  # gc'ed version or removed snapshot: start again from the served dataset
            echo(f"warning: the last retrain's snapshot is unavailable ({exc}); using the served dataset")
        else:
            folder = store.path(served)
            users = json.loads((folder / "user_ids.json").read_text())
            items = json.loads((folder / "item_ids.json").read_text())
            if data.user_ids[: len(users)] == users and data.item_ids[: len(items)] == items:
                return data, snap_dir
            echo(f"warning: served {served} is not an ancestor of {ck.version}; using the served dataset")
    return base_dataset(store, served, dataset)


@dataclass
class RetrainResult:
    status: str  # nothing_new | dry_run | published | promoted | advanced
    message: str
    version: str | None = None
    gate: dict[str, Any] | None = None
    stream: dict[str, Any] | None = None


def gate_decision(served: dict, candidate: dict, tolerance: float, holdout: int) -> dict[str, Any]:
    s, c = float(served.get(GATE_METRIC, 0.0)), float(candidate.get(GATE_METRIC, 0.0))
    floor = s * (1.0 - tolerance)
    passed = holdout > 0 and c >= floor
    if holdout == 0:
        reason = "no holdout interaction to compare on (too few new interactions per user)"
    elif passed:
        reason = f"candidate {GATE_METRIC} {c:.4f} >= served {s:.4f} x (1 - {tolerance:g}) = {floor:.4f}"
    else:
        reason = f"candidate {GATE_METRIC} {c:.4f} < served {s:.4f} x (1 - {tolerance:g}) = {floor:.4f}"
    return {
        "metric": GATE_METRIC,
        "tolerance": tolerance,
        "holdout": holdout,
        "served": served,
        "candidate": candidate,
        "passed": passed,
        "reason": reason,
    }


# ------------------------------------------------------------------------------------------ the retrain
def retrain(
    *,
    store_root: str | Path | None,
    redis_url: str,
    prefix: str = "edgerec",
    shards: int = 16,
    state_dir: str | Path | None = None,
    dataset: str | None = None,
    epochs: int = 2,
    tolerance: float = DEFAULT_TOLERANCE,
    promote: bool = True,
    dry_run: bool = False,
    train_overrides: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> RetrainResult:
    from model_store import ModelStore
    from model_store.errors import NoCurrentVersion
    from service.cache import stream_keys

    store = ModelStore(store_root)
    state = Path(state_dir) if state_dir else store.root / "retrain"
    keys = stream_keys(prefix, shards)
    try:
        base = store.current()
    except NoCurrentVersion as exc:
        raise RetrainError(
            f"{exc}; train, export and promote a first version (`edgerec export --promote`)"
        ) from None
    with _exclusive(state):
        ck = load_checkpoint(state)
        after = _full(ck.positions, keys)

        # Published but not advanced (a crash between publish and checkpoint): finish that retrain.
        done = find_published(store, after)
        if done is not None:
            r = store.manifest(done).extra["retrain"]
            msg = f"version {done} already learned from the range after the checkpoint; checkpoint advanced"
            if dry_run:
                return RetrainResult("dry_run", f"would advance the checkpoint to version {done}", done)
            if promote and r["gate"]["passed"] and store.current() == r["base_version"]:
                store.promote(done)
                msg += f"; promoted ({r['gate']['reason']})"
            save_checkpoint(
                state, Checkpoint({k: v["upper"] for k, v in r["stream"]["shards"].items()}, done)
            )
            echo(msg)
            return RetrainResult("advanced", msg, done, r["gate"], r["stream"])

        from service.stream_reader import read_since

        client = redis_client(redis_url)
        try:
            client.ping()
            read = read_since(client, keys, after)
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                raise RetrainError(f"Redis at {redis_url} unusable: {type(exc).__name__}: {exc}") from exc
            raise
        finally:
            client.close()
        if read.count == 0:
            msg = f"nothing new since {ck.describe()}"
            echo(msg)
            return RetrainResult("nothing_new", msg)
        for key, rng in read.ranges.items():
            if rng.trimmed:
                echo(f"warning: {key} was trimmed (MAXLEN) past the checkpoint; older entries are lost")
        _hook("read")
        return _learn(
            store,
            base,
            state,
            keys,
            read,
            ck,
            dataset,
            epochs,
            tolerance,
            promote,
            dry_run,
            train_overrides,
            echo,
        )


def _learn(store, base, state, keys, read, ck, dataset, epochs, tolerance, promote, dry_run, overrides, echo):
    from training.data.snapshot import Event, merge
    from training.evaluation.holdout import score_holdout
    from training.export.exporter import code_version, export_run, version_metadata
    from training.recipe.warm_start import base_train_config, warm_train

    t0 = time.time()
    base_dir = store.path(base)
    data, data_spec = lineage_dataset(store, base, ck, dataset, echo)
    events, order = [], 0
    for e in read.entries:
        for item in e.items:
            events.append(Event(e.user, item, order))
            order += 1
    snap = merge(data, events)
    name = f"retrain-{snap.data.fingerprint[:12]}"
    snap_dir = state / "snapshots" / name
    snap.data.save(snap_dir)
    echo(
        f"read {read.count} stream entries ({len(events)} interactions) from {len(keys)} shard(s); "
        f"snapshot {snap_dir.name}: {snap.stats}"
    )
    recorded = store.manifest(base).extra.get("retrain", {}).get("train_config")
    train_cfg = base_train_config(base_dir, recorded)
    run_cfg = {**train_cfg, **(overrides or {})}  # overrides are this retrain's only, never recorded as base
    run_dir, export_dir = state / "runs" / name, state / "exports" / name
    metrics = warm_train(base_dir, snap_dir, run_dir, run_cfg, epochs=epochs)
    _hook("train")
    index_kind = json.loads((base_dir / "export.json").read_text()).get("index_kind", "exact")
    export_run(run_dir, export_dir, index_kind, dataset=snap_dir, overwrite=True)
    served_m = score_holdout(base_dir, snap.data)
    cand_m = score_holdout(export_dir, snap.data)
    gate = gate_decision(served_m, cand_m, tolerance, snap.stats["holdout"])
    stream = {
        "shards": {k: r.to_dict() for k, r in read.ranges.items()},
        "entries": read.count,
        "interactions": len(events),
    }
    echo(f"gate: {gate['reason']}")
    if dry_run:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(export_dir, ignore_errors=True)
        return RetrainResult(
            "dry_run", f"dry run: nothing published; gate: {gate['reason']}", None, gate, stream
        )
    meta = version_metadata(export_dir) | {"code_version": code_version()}
    meta["extra"]["retrain"] = {
        "base_version": base,
        "stream": stream,
        "snapshot": snap.stats,
        "dataset_dir": str(snap_dir.resolve()),
        "base_dataset": data_spec,
        "train_config": train_cfg,
        "overrides": overrides or {},
        "epochs": epochs,
        "gate": gate,
        "test": metrics.get("test"),
        "seconds": round(time.time() - t0, 1),
    }
    vid = store.publish(export_dir, meta)
    _hook("publish")
    promoted = promote and gate["passed"]
    if promoted:
        store.promote(vid)
    save_checkpoint(state, Checkpoint({k: r.upper for k, r in read.ranges.items()}, vid))
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(export_dir, ignore_errors=True)
    if promoted:
        msg = f"published and promoted {vid}"
    elif not promote:
        msg = f"published {vid}, not promoted (--no-promote); gate: {gate['reason']}"
    else:
        msg = f"published {vid}, NOT promoted: {gate['reason']}"
    echo(msg)
    return RetrainResult("promoted" if promoted else "published", msg, vid, gate, stream)


# ------------------------------------------------------------------------------------------ CLI
def retrain_cmd(
    store: Path | None = STORE_OPTION,
    redis_url: str | None = typer.Option(
        None, "--redis-url", envvar="EDGEREC_REDIS_URL", help="The service's Redis (redis://host:6379/0)."
    ),
    prefix: str = typer.Option(
        "edgerec", "--prefix", envvar="EDGEREC_REDIS_PREFIX", help="Redis key prefix."
    ),
    shards: int = typer.Option(
        16, "--stream-shards", envvar="EDGEREC_STREAM_SHARDS", min=1, help="Stream shards."
    ),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Checkpoint, snapshots (default: <store>/retrain).", show_default=False
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="The served version's prepared dataset, when it cannot be found by itself."
    ),
    epochs: int = typer.Option(2, "--epochs", min=1, help="Fine-tuning epochs of the warm start."),
    tolerance: float = typer.Option(
        DEFAULT_TOLERANCE, "--tolerance", min=0.0, max=1.0, help="Allowed relative R@20 drop vs served."
    ),
    promote: bool = typer.Option(
        True, "--promote/--no-promote", help="Promote a candidate that passes the gate."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="TrainConfig field for this fine-tune, key=value (JSON value), e.g. --set lr=5e-5."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Read, train and gate; publish nothing, keep the checkpoint."
    ),
) -> None:
    """Learn from the interactions acknowledged since the last retrain: read the stream, warm-start a
    fine-tune of the served version, gate it against the served one on the newest interactions, publish
    (and promote) it, advance the checkpoint."""
    if not redis_url:
        typer.echo(
            "error: no Redis: pass --redis-url or set EDGEREC_REDIS_URL (the service's Redis)", err=True
        )
        raise typer.Exit(EXIT_FAILED)
    from model_store.errors import ModelStoreError

    fields: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    try:
        retrain(
            store_root=store,
            redis_url=redis_url,
            prefix=prefix,
            shards=shards,
            state_dir=state_dir,
            dataset=dataset,
            epochs=epochs,
            tolerance=tolerance,
            promote=promote,
            dry_run=dry_run,
            train_overrides=fields,
            echo=typer.echo,
        )
    except (RetrainError, ModelStoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain_cmd)

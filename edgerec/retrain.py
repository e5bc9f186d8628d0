"""``edgerec retrain``: learn from the interactions the service acknowledged since the last retrain.

One retrain, in order (docs/deploy.md, "Retraining from the stream"):

1. **read** every interaction stream shard from the checkpoint's position up to each shard's last id at that
   moment (``service.stream_reader``); what arrives later waits for the next retrain;
2. **snapshot**: the served version's dataset + the new interactions, newest one per user held out
   (``training.data.snapshot``), saved under the state folder; new items take their text from the Redis
   catalogue (``service.catalogue.read_catalogue``), and available catalogue items nobody has interacted with
   yet are listed in the manifest (not trained: they have no interaction to learn a row from);
3. **train**: the served version's weights, new rows from their neighbours, a short fine-tune
   (``training.recipe.warm_start``), exported like any run;
4. **gate**: served and candidate scored on the holdout with one protocol (``training.evaluation.holdout``);
5. **publish** the candidate, its item-item term first refitted on every interaction of the snapshot,
   holdout included (``training.recipe.blend.refit_item_item``: the gate judged it without them, the
   version serves with them), its manifest's ``extra.retrain`` recording the stream range (per shard: after,
   upper, first, last, count), the gate and the snapshot; **promote** it if the gate passed;
6. **advance** the checkpoint (``<state>/checkpoint.json``: per shard, the last id learned from; temp file,
   fsync, rename).

Exactly once: the checkpoint moves only after the publish, and a rerun first looks for a version whose
manifest starts at the checkpoint's position: one found was published but not advanced, so it is promoted
(if its gate passed and the served version is still its base) and the checkpoint advances without
retraining. A crash anywhere before leaves the checkpoint where it was, so the rerun reads the same range.

Housekeeping (under the same lock): leftovers of a killed retrain (run and export folders, half-written
snapshots) are removed first; after a retrain only the newest ``--keep-snapshots`` snapshots stay, never the
one the next retrain extends nor the served version's. Every retrain that gets the lock writes a status
record, ``<store>/retrain/last.json`` (``service.metrics.RETRAIN_STATUS_FILE``, atomically), which the
service exposes on ``/metrics``.

Under ``torchrun`` (``WORLD_SIZE`` > 1, the multi-node overlay) rank 0 alone reads the stream, snapshots,
exports, gates, publishes and advances the checkpoint; the other ranks only join the fine-tune, whose plan
(folders, configuration) rank 0 broadcasts to them, or ``None`` when there is nothing to train.

Test hooks: ``EDGEREC_RETRAIN_FAIL_AT=read|train|publish`` raises right after that step (after reading;
after training; after publishing, before the checkpoint advances), as a crash there would;
``EDGEREC_RETRAIN_PAUSE_AT=<same>`` stops there until a line arrives on stdin, so that a test can SIGKILL the
process in that phase.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import typer

if TYPE_CHECKING:
    import numpy as np

from model_store.cli import STORE_OPTION
from service.metrics import RETRAIN_STATUS_FILE

FAIL_ENV = "EDGEREC_RETRAIN_FAIL_AT"
PAUSE_ENV = "EDGEREC_RETRAIN_PAUSE_AT"
FAIL_POINTS = ("read", "train", "publish")
CHECKPOINT_FILE = "checkpoint.json"
DEFAULT_TOLERANCE = 0.02
# R@20 over fewer holdout users moves by more than the tolerance from noise alone.
DEFAULT_MIN_HOLDOUT = 100
DEFAULT_KEEP_SNAPSHOTS = 3
GATE_METRIC = "recall@20"
GATE_Z = 1.645  # one-sided 95 %: how far from zero a per-user difference must lie to be more than noise
EXIT_FAILED = 2


class RetrainError(RuntimeError):
    """A retrain cannot run (no served version, no Redis, wrong dataset, another retrain running, ...)."""


class InjectedFailure(RuntimeError):
    """Raised by the ``EDGEREC_RETRAIN_FAIL_AT`` test hook."""


def _hook(point: str) -> None:
    if os.environ.get(PAUSE_ENV) == point:
        print(f"{PAUSE_ENV}={point}: paused", file=sys.stderr, flush=True)
        sys.stdin.readline()
    if os.environ.get(FAIL_ENV) == point:
        raise InjectedFailure(f"{FAIL_ENV}={point}: retrain stopped after {point} (test hook)")


def write_json_atomic(path: Path, doc: Any) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: a reader sees the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the service (another uid perhaps) reads last.json
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
    ck.updated_at = _now_iso()
    doc = {"positions": ck.positions, "version": ck.version, "updated_at": ck.updated_at}
    write_json_atomic(state_dir / CHECKPOINT_FILE, doc)


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


# ------------------------------------------------------------------------------------------ housekeeping
def sweep_leftovers(state: Path) -> None:
    """What a killed retrain leaves behind: its run and export folders and half-written snapshot folders
    (``PreparedDataset.save`` writes into a hidden temp sibling). Called under the lock, so none is in use."""
    for sub in ("runs", "exports"):
        shutil.rmtree(state / sub, ignore_errors=True)
    snaps = state / "snapshots"
    if snaps.is_dir():
        for p in snaps.iterdir():
            if p.name.startswith(".") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def prune_snapshots(state: Path, keep: int, protect: set[Path]) -> list[str]:
    """Remove all but the newest ``keep`` snapshots (by folder time), never one in ``protect``."""
    snaps = state / "snapshots"
    if not snaps.is_dir():
        return []
    folders = sorted(
        (p for p in snaps.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime_ns,
        reverse=True,
    )
    keep_set = {p.resolve() for p in protect}
    removed = []
    for p in folders[keep:]:
        if p.resolve() not in keep_set:
            shutil.rmtree(p)
            removed.append(p.name)
    return removed


def _snapshot_of(store, version: str | None) -> Path | None:
    """The snapshot folder a retrained version learned from (None for a version trained otherwise)."""
    if not version:
        return None
    try:
        return Path(store.manifest(version).extra["retrain"]["dataset_dir"])
    except Exception:  # not a retrained version, or gone: nothing to protect
        return None


# ------------------------------------------------------------------------------------------ pieces
def redis_client(url: str):
    import redis

    if url.startswith("redis+cluster://"):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"))
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)


def redacted(url: str) -> str:
    """``url`` without its password (the Kubernetes URL carries one): safe for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


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
    # the snapshot a retrained version learned from, then --dataset (a prepared folder, or the raw source
    # the first version was prepared from with default settings: prepared again in memory)
    candidates = [recorded] if recorded else []
    if dataset:
        candidates.append(dataset)
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
    yet, or the served version is not its ancestor) the served version's own dataset (``--dataset`` is only
    a way to find that one)."""
    from training.data.dataset import PreparedDataset

    if ck.version:
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
    status: str  # nothing_new | dry_run | published | promoted | advanced | follower
    message: str
    version: str | None = None
    gate: dict[str, Any] | None = None
    stream: dict[str, Any] | None = None
    snapshot: dict[str, Any] | None = None  # the snapshot's stats (new users/items, holdout, ...)
    base: str | None = None
    promoted: bool = False


CATALOGUE_WAITING_LISTED = 1000  # the manifest lists at most this many waiting items (and counts them all)


def catalogue_waiting(catalogue: dict[str, dict], item_ids: list[str]) -> list[str]:
    """Available catalogue items the snapshot does not hold: nobody has interacted with them yet."""
    known = set(item_ids)
    return sorted(i for i, r in catalogue.items() if r.get("available", True) and i not in known)


def gate_decision(
    served: dict,
    candidate: dict,
    tolerance: float,
    holdout: int,
    min_holdout: int = DEFAULT_MIN_HOLDOUT,
    served_users: np.ndarray | None = None,
    candidate_users: np.ndarray | None = None,
) -> dict[str, Any]:
    """Promote unless the candidate's R@20 is below the served version's by more than ``tolerance``.

    With both versions' per-user R@20 on the same holdout users (``served_users``, ``candidate_users``) the
    record also says how sure that comparison is (``paired``: the mean per-user difference, its standard
    error and whether it lies beyond 1.645 standard errors from zero, one-sided 95 %). The decision stays
    on the means: a gate that passed whatever the holdout cannot tell apart would promote a wrecked model
    on a small holdout (30 users: a candidate with no hit at all is within one standard error of a served
    version with one), so small holdouts are refused by ``min_holdout`` and a refusal the record marks as
    not significant is the sign to wait for more traffic rather than to distrust the candidate."""
    import numpy as np  # here: the CLI's other commands do not need it

    s, c = float(served.get(GATE_METRIC, 0.0)), float(candidate.get(GATE_METRIC, 0.0))
    floor = s * (1.0 - tolerance)
    too_small = holdout < max(1, min_holdout)
    passed = not too_small and c >= floor
    paired: dict[str, Any] | None = None
    noise = ""
    if served_users is not None and candidate_users is not None and len(served_users) > 1:
        d = np.asarray(candidate_users, np.float64) - np.asarray(served_users, np.float64)
        mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))
        significant = abs(mean) > GATE_Z * se
        paired = {"mean_difference": mean, "standard_error": se, "users": int(d.size)}
        paired["significant"] = significant
        noise = (
            f"; per user over {d.size} holdout users: {mean:+.4f} ± {se:.4f} (standard error), "
            + ("beyond" if significant else "within")
            + " the noise of this holdout"
        )
    if too_small:
        reason = (
            f"holdout too small: {holdout} interaction(s) < --min-holdout {min_holdout} "
            "(retrain when more traffic has come in, or --force-promote)"
        )
    else:
        op = ">=" if passed else "<"
        reason = f"candidate {GATE_METRIC} {c:.4f} {op} served {s:.4f} x (1 - {tolerance:g}) = {floor:.4f}"
        reason += noise
    return {
        "metric": GATE_METRIC,
        "tolerance": tolerance,
        "holdout": holdout,
        "min_holdout": min_holdout,
        "too_small": too_small,
        "served": served,
        "candidate": candidate,
        "paired": paired,
        "passed": passed,
        "reason": reason,
    }


# ------------------------------------------------------------------------------------------ status record
def status_record(
    result: RetrainResult | None, started: float, finished: float, error: str | None = None
) -> dict[str, Any]:
    """What ``<store>/retrain/last.json`` holds (``service.metrics.RetrainStatus`` turns it into gauges)."""
    r = result or RetrainResult("failed", error or "")
    stream, snap, gate = r.stream or {}, r.snapshot or {}, r.gate or {}
    metric = gate.get("metric", GATE_METRIC)
    return {
        "status": "failed" if error else r.status,
        "ok": error is None,
        "error": error,
        "message": r.message,
        "started_at": round(started, 3),
        "finished_at": round(finished, 3),
        "seconds": round(finished - started, 1),
        "version": r.version,
        "base_version": r.base,
        "promoted": r.promoted,
        "stream": {
            "entries": stream.get("entries", 0),
            "interactions": stream.get("interactions", 0),
            "shards": {
                k: {"after": v["after"], "upper": v["upper"]} for k, v in stream.get("shards", {}).items()
            },
        },
        "new_users": snap.get("new_users", 0),
        "new_items": snap.get("new_items", 0),
        "holdout": snap.get("holdout", 0),
        "gate": {
            "metric": metric,
            "passed": gate.get("passed"),
            "reason": gate.get("reason"),
            "served": (gate.get("served") or {}).get(metric),
            "candidate": (gate.get("candidate") or {}).get(metric),
        }
        if gate
        else None,
    }


# ------------------------------------------------------------------------------------------ ranks
class Ranks:
    """The processes of one retrain: one, or the ranks of a ``torchrun`` (``WORLD_SIZE`` > 1). Rank 0 does
    the retrain; the others only join its fine-tune, whose plan rank 0 broadcasts (see the module docstring).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.dist = None
        self._sent = False
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from training.recipe import loop

            self.dist = loop.setup(device)

    @property
    def main(self) -> bool:
        return self.dist is None or self.dist.main

    def _broadcast(self, obj: Any) -> Any:
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def send(self, plan: dict[str, Any] | None) -> None:
        """Rank 0: the fine-tune's arguments (``warm_train``'s), or None: nothing to train, exit."""
        if self.dist is not None and not self._sent:
            self._sent = True
            self._broadcast(plan)

    def release(self) -> None:
        """Rank 0 leaving without a fine-tune (nothing new, a crash, ...): the other ranks stop waiting."""
        if self.dist is None:
            return
        from training.recipe import loop

        with contextlib.suppress(Exception):  # the group may already be gone (warm_train tore it down)
            self.send(None)
            loop.teardown(self.dist)

    def follow(self, echo: Callable[[str], None]) -> RetrainResult:
        """A rank other than 0: wait for the plan, join the fine-tune, leave the rest to rank 0."""
        from training.recipe import loop
        from training.recipe.warm_start import warm_train

        rank = self.dist.rank
        plan = self._broadcast(None)
        if plan is None:
            loop.teardown(self.dist)
            echo(f"rank {rank}: nothing to train")
            return RetrainResult("follower", f"rank {rank}: nothing to train")
        warm_train(**plan)
        echo(f"rank {rank}: fine-tune done; rank 0 exports, gates and publishes")
        return RetrainResult("follower", f"rank {rank}: fine-tune done")


# ------------------------------------------------------------------------------------------ the retrain
@dataclass
class Options:
    epochs: int = 2
    tolerance: float = DEFAULT_TOLERANCE
    min_holdout: int = DEFAULT_MIN_HOLDOUT
    force_promote: bool = False
    promote: bool = True
    dry_run: bool = False
    dataset: str | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)


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
    min_holdout: int = DEFAULT_MIN_HOLDOUT,
    force_promote: bool = False,
    keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
    promote: bool = True,
    dry_run: bool = False,
    train_overrides: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> RetrainResult:
    from model_store import ModelStore
    from model_store.errors import NoCurrentVersion

    opts = Options(
        epochs, tolerance, min_holdout, force_promote, promote, dry_run, dataset, dict(train_overrides or {})
    )
    ranks = Ranks(str(opts.train_overrides.get("device", "auto")))
    if not ranks.main:
        return ranks.follow(echo)
    try:
        store = ModelStore(store_root)
        state = Path(state_dir) if state_dir else store.root / "retrain"
        try:
            base = store.current()
        except NoCurrentVersion as exc:
            where = "" if store.root.is_dir() else " (the folder does not exist: check --store)"
            raise RetrainError(
                f"{exc}{where}; train, export and promote a first version (`edgerec export --promote`)"
            ) from None
        with _exclusive(state):
            return _recorded(store, base, state, redis_url, prefix, shards, opts, keep_snapshots, ranks, echo)
    finally:
        ranks.release()


def _recorded(store, base, state, redis_url, prefix, shards, opts, keep, ranks, echo) -> RetrainResult:
    """One retrain under the lock, its status record written whatever the outcome (a dry run writes none)."""
    started = time.time()
    try:
        sweep_leftovers(state)
        result = _run(store, base, state, redis_url, prefix, shards, opts, ranks, echo)
    except InjectedFailure:
        raise  # the test hook stands for a crash, which records nothing
    except Exception as exc:
        if not opts.dry_run:
            write_json_atomic(
                store.root / RETRAIN_STATUS_FILE,
                status_record(None, started, time.time(), f"{type(exc).__name__}: {exc}"),
            )
        raise
    if not opts.dry_run:
        protect = {
            p for p in (_snapshot_of(store, result.version), _snapshot_of(store, store.current())) if p
        }
        ck = load_checkpoint(state)
        if (p := _snapshot_of(store, ck.version)) is not None:
            protect.add(p)
        removed = prune_snapshots(state, keep, protect)
        if removed:
            echo(f"removed {len(removed)} old snapshot(s) (--keep-snapshots {keep})")
        write_json_atomic(store.root / RETRAIN_STATUS_FILE, status_record(result, started, time.time()))
    return result


def _run(store, base, state, redis_url, prefix, shards, opts, ranks, echo) -> RetrainResult:
    from service.cache import stream_keys

    keys = stream_keys(prefix, shards)
    ck = load_checkpoint(state)
    after = _full(ck.positions, keys)

    # Published but not advanced (a crash between publish and checkpoint): finish that retrain.
    done = find_published(store, after)
    if done is not None:
        return _advance(store, state, done, opts, echo)

    read, catalogue = _read(redis_url, keys, after, prefix)
    if read.count == 0:
        msg = f"nothing new since {ck.describe()}"
        echo(msg)
        return RetrainResult("nothing_new", msg, base=base)
    for key, rng in read.ranges.items():
        if rng.trimmed:
            echo(f"warning: {key} was trimmed (MAXLEN) past the checkpoint; older entries are lost")
    _hook("read")
    return _learn(store, base, state, keys, read, catalogue, ck, opts, ranks, echo)


def _read(redis_url: str, keys: list[str], after: dict[str, str], prefix: str):
    """The stream since the checkpoint, and (when something is new) the catalogue's records, which give new
    items their text and name the items that wait for their first interaction."""
    from service.catalogue import read_catalogue
    from service.stream_reader import read_since

    try:
        client = redis_client(redis_url)
    except ValueError as exc:  # a malformed URL
        raise RetrainError(f"Redis URL {redacted(redis_url)} is not usable: {exc}") from None
    try:
        client.ping()
        read = read_since(client, keys, after)
        return read, (read_catalogue(client, prefix) if read.count else {})
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            raise RetrainError(
                f"Redis at {redacted(redis_url)} unreachable or refusing ({type(exc).__name__}: {exc}); "
                "nothing was read and the checkpoint is unchanged"
            ) from None
        raise
    finally:
        client.close()


def _advance(store, state, done: str, opts: Options, echo) -> RetrainResult:
    r = store.manifest(done).extra["retrain"]
    msg = f"version {done} already learned from the range after the checkpoint; checkpoint advanced"
    if opts.dry_run:
        return RetrainResult("dry_run", f"would advance the checkpoint to version {done}", done)
    # the promotion the crashed run decided (its gate or --force-promote), unless another was promoted since
    decided = r.get("promote", r["gate"]["passed"])
    promoted = False
    if opts.promote and decided and store.current() == r["base_version"]:
        store.promote(done)
        promoted = True
        msg += f"; promoted ({r['gate']['reason']})"
    save_checkpoint(state, Checkpoint({k: v["upper"] for k, v in r["stream"]["shards"].items()}, done))
    echo(msg)
    return RetrainResult(
        "advanced", msg, done, r["gate"], r["stream"], r.get("snapshot"), r["base_version"], promoted
    )


def _learn(store, base, state, keys, read, catalogue, ck, opts: Options, ranks: Ranks, echo) -> RetrainResult:
    from training.data.snapshot import Event, merge
    from training.evaluation.holdout import score_holdout
    from training.export.exporter import code_version, export_run, version_metadata
    from training.recipe.blend import refit_item_item
    from training.recipe.warm_start import base_train_config, served_blend, warm_train

    t0 = time.time()
    base_dir = store.path(base)
    data, data_spec = lineage_dataset(store, base, ck, opts.dataset, echo)
    events, order = [], 0
    for e in read.entries:
        for item in e.items:
            events.append(Event(e.user, item, order))
            order += 1
    snap = merge(data, events, catalogue=catalogue)
    waiting = catalogue_waiting(catalogue, snap.data.item_ids)
    name = f"retrain-{snap.data.fingerprint[:12]}"
    snap_dir = state / "snapshots" / name
    snap.data.save(snap_dir)
    echo(
        f"read {read.count} stream entries ({len(events)} interactions) from {len(keys)} shard(s); "
        f"snapshot {snap_dir.name}: {snap.stats}; catalogue: {len(catalogue)} record(s), "
        f"{len(waiting)} available item(s) without interactions yet (not trained)"
    )
    recorded = store.manifest(base).extra.get("retrain", {}).get("train_config")
    train_cfg = base_train_config(base_dir, recorded)
    run_cfg = {**train_cfg, **served_blend(base_dir)}
    run_cfg |= opts.train_overrides  # this retrain's only, never recorded as base
    if ranks.dist is not None:
        run_cfg["device"] = ranks.device  # the device the process group was set up for
    run_dir, export_dir = state / "runs" / name, state / "exports" / name
    plan = {
        "version_dir": str(base_dir),
        "snapshot_dir": str(snap_dir),
        "run_dir": str(run_dir),
        "train_config": run_cfg,
        "epochs": opts.epochs,
    }
    ranks.send(plan)
    metrics = warm_train(**plan)
    _hook("train")
    index_kind = json.loads((base_dir / "export.json").read_text()).get("index_kind", "exact")
    export_run(run_dir, export_dir, index_kind, dataset=snap_dir, overwrite=True)
    served_u: dict[str, np.ndarray] = {}
    cand_u: dict[str, np.ndarray] = {}
    served_m = score_holdout(base_dir, snap.data, per_user=served_u)
    cand_m = score_holdout(export_dir, snap.data, per_user=cand_u)
    gate = gate_decision(
        served_m,
        cand_m,
        opts.tolerance,
        snap.stats["holdout"],
        opts.min_holdout,
        served_u.get(GATE_METRIC),
        cand_u.get(GATE_METRIC),
    )
    stream = {
        "shards": {k: r.to_dict() for k, r in read.ranges.items()},
        "entries": read.count,
        "interactions": len(events),
    }
    echo(f"gate: {gate['reason']}")
    if opts.dry_run:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(export_dir, ignore_errors=True)
        msg = f"dry run: nothing published; gate: {gate['reason']}"
        return RetrainResult("dry_run", msg, None, gate, stream, snap.stats, base)
    forced = opts.force_promote and not gate["passed"]
    promote = opts.promote and (gate["passed"] or opts.force_promote)
    # judged without the holdout; served with every interaction of the snapshot in its item-item weights
    every = (snap.data.train + snap.data.valid + snap.data.test).tocsr()
    term_refit = refit_item_item(export_dir, every)
    meta = version_metadata(export_dir) | {"code_version": code_version()}
    meta["extra"]["retrain"] = {
        "base_version": base,
        "stream": stream,
        "snapshot": snap.stats,
        "dataset_dir": str(snap_dir.resolve()),
        "base_dataset": data_spec,
        "catalogue": {
            "records": len(catalogue),
            "new_items_with_text": snap.stats["new_items_with_text"],
            # available but never interacted with: no row to train; the service serves them from text
            "waiting": len(waiting),
            "waiting_items": waiting[:CATALOGUE_WAITING_LISTED],
        },
        "train_config": train_cfg,
        "overrides": opts.train_overrides,
        "epochs": opts.epochs,
        "gate": gate,
        "item_item_refit": term_refit,  # None: the version has no item-item term
        "promote": promote,  # what this retrain decided; a rerun after a crash completes it
        "forced": forced,
        "world_size": ranks.dist.world if ranks.dist is not None else 1,
        "test": metrics.get("test"),
        "seconds": round(time.time() - t0, 1),
    }
    vid = store.publish(export_dir, meta)
    _hook("publish")
    if promote:
        store.promote(vid)
    save_checkpoint(state, Checkpoint({k: r.upper for k, r in read.ranges.items()}, vid))
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(export_dir, ignore_errors=True)
    if forced and promote:
        msg = f"published and promoted {vid} (--force-promote; the gate said: {gate['reason']})"
    elif promote:
        msg = f"published and promoted {vid}"
    elif not opts.promote:
        msg = f"published {vid}, not promoted (--no-promote); gate: {gate['reason']}"
    else:
        msg = f"published {vid}, NOT promoted: {gate['reason']}"
    echo(msg)
    status = "promoted" if promote else "published"
    return RetrainResult(status, msg, vid, gate, stream, snap.stats, base, promote)


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
        None,
        "--dataset",
        help="The first version's dataset when it cannot be found by itself: its prepared folder, or the raw "
        "source it was prepared from with the default settings (fingerprint-checked).",
    ),
    epochs: int = typer.Option(2, "--epochs", min=1, help="Fine-tuning epochs of the warm start."),
    tolerance: float = typer.Option(
        DEFAULT_TOLERANCE, "--tolerance", min=0.0, max=1.0, help="Allowed relative R@20 drop vs served."
    ),
    min_holdout: int = typer.Option(
        DEFAULT_MIN_HOLDOUT,
        "--min-holdout",
        min=1,
        help="Fewest holdout interactions the gate decides on; below it the candidate is published, not "
        "promoted.",
    ),
    promote: bool = typer.Option(
        True, "--promote/--no-promote", help="Promote a candidate that passes the gate."
    ),
    force_promote: bool = typer.Option(
        False, "--force-promote", help="Promote the candidate whatever the gate says (recorded as forced)."
    ),
    keep_snapshots: int = typer.Option(
        DEFAULT_KEEP_SNAPSHOTS,
        "--keep-snapshots",
        min=1,
        help="Newest snapshots kept in the state folder (the served one and the next base are always kept).",
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
            min_holdout=min_holdout,
            force_promote=force_promote,
            keep_snapshots=keep_snapshots,
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

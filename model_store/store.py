"""A folder of immutable, verified model versions with an atomically switched `CURRENT` pointer.

Layout under ``root``::

    versions/<id>/        one folder per version: manifest.json + the model files, read-only
    CURRENT               the promoted version id (one line), replaced atomically
    history.json          promotion stack, newest last; `rollback()` pops it
    .lock                 fcntl lock serialising id allocation, promote, rollback and gc across processes
    .tmp/                 publishes in progress (each holds a lock on its own ``.lock`` file while it runs)

Publishing copies into ``.tmp`` without holding the store lock (copying is the slow part); only allocating
the id, writing the manifest and the final rename happen under the lock, so concurrent publishers never block
each other long and never see each other's half-written folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

import durable as atomic

from .errors import (
    FileNotInVersion,
    IntegrityError,
    InvalidVersionFolder,
    ModelStoreError,
    NoCurrentVersion,
    NoPreviousVersion,
    VersionNotFound,
)
from .manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    Metadata,
    check_relative_name,
    parse_metadata,
    sha256_file,
    utc_now_iso,
)

VERSION_RE = re.compile(r"^v\d{8}-\d{6}-\d{3}-[0-9a-f]{8}$")
ALIASES = ("current", "previous", "latest")
ENV_STORE = "EDGEREC_MODEL_STORE"
_COPY_CHUNK = 1 << 20


def default_store_root() -> Path:
    """``$EDGEREC_MODEL_STORE``, else ``$EDGEREC_HOME/models``, else ``./.edgerec/models``."""
    if os.environ.get(ENV_STORE):
        return Path(os.environ[ENV_STORE])
    return Path(os.environ.get("EDGEREC_HOME", ".edgerec")) / "models"


@dataclass(frozen=True)
class VersionInfo:
    """One row of `ModelStore.list()`; ``error`` replaces the metadata when the manifest is unreadable."""

    version: str
    created_at: str | None
    metrics: dict[str, dict[str, float]]
    size_bytes: int
    promoted: bool = False
    previous: bool = False
    error: str | None = None


@dataclass
class VersionHandle:
    """An opened (verified) version for the service: typed access to the files its manifest lists."""

    version: str
    path: Path
    manifest: Manifest
    _json_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def has(self, name: str) -> bool:
        return name in self.manifest.files

    def file(self, name: str) -> Path:
        """Path of a listed file; a name not in the manifest raises `FileNotInVersion`."""
        if name not in self.manifest.files:
            raise FileNotInVersion(f"version {self.version} has no file {name!r}")
        return self.path / name

    def load_json(self, name: str) -> Any:
        if name not in self._json_cache:
            with open(self.file(name), encoding="utf-8") as f:
                self._json_cache[name] = json.load(f)
        return self._json_cache[name]

    def load_npy(self, name: str, mmap: bool = True) -> np.ndarray:
        """Load a .npy array; memory-mapped read-only by default. Pickled object arrays are refused."""
        return np.load(self.file(name), mmap_mode="r" if mmap else None, allow_pickle=False)

    def load_index(self, use_gpu: bool | str = "auto"):
        """The version's FAISS index (index.faiss + index.json), see `model_store.index.load_index`."""
        from .index import load_index

        self.file("index.faiss")
        self.file("index.json")
        return load_index(self.path, use_gpu=use_gpu)


class ModelStore:
    """Publish, verify, promote and roll back model versions stored under ``root``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_root()
        self.versions_dir = self.root / "versions"
        self.tmp_dir = self.root / ".tmp"
        self._current_file = self.root / "CURRENT"
        self._history_file = self.root / "history.json"
        self._lock_file = self.root / ".lock"

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # ------------------------------------------------------------------ locking / layout
    def _ensure_layout(self) -> None:
        for d in (self.root, self.versions_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_layout()
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------ publish
    def publish(
        self, src_folder: str | os.PathLike[str], metadata: Metadata | dict[str, Any] | None = None
    ) -> str:
        """Copy ``src_folder`` into the store as a new immutable version and return its id.

        A ``manifest.json`` already in ``src_folder`` (e.g. a version copied from another store) is not
        copied; its metadata fields serve as defaults that ``metadata`` overrides key by key. Nothing becomes
        visible unless the whole copy succeeded: files are written into ``.tmp/``, fsynced, then the folder is
        renamed into place.
        """
        src = Path(src_folder)
        if not src.is_dir():
            raise InvalidVersionFolder(f"{src} is not a folder")
        meta = self._merge_metadata(src, metadata)
        names = _scan_source(src)
        self._ensure_layout()
        with self._locked():
            # Create and take the publish lock under the store lock so gc never mistakes it for a dead one.
            work = Path(tempfile.mkdtemp(prefix="publish-", dir=self.tmp_dir))
            lock_fd = os.open(str(work) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            files = {name: _copy_hashed(src / name, work / name) for name in names}
            for d in _dirs_bottom_up(work):
                _fsync_dir(d)
            with self._locked():
                version, created_at = self._new_version_id(files)
                manifest = Manifest(
                    schema_version=SCHEMA_VERSION,
                    version=version,
                    created_at=created_at,
                    files=files,
                    dataset_fingerprint=meta.dataset_fingerprint,
                    config=meta.config,
                    metrics=meta.metrics,
                    code_version=meta.code_version,  # the publisher says which code made it
                    extra=meta.extra,
                )
                _write_file_synced(work / MANIFEST_NAME, manifest.to_json().encode())
                _fsync_dir(work)
                _make_read_only(work, keep_top_writable=True)
                final = self.versions_dir / version
                os.rename(work, final)
                # Linux needs write permission on a folder to move it to another parent (its ".." changes),
                # so the top folder turns read-only only once it is in place.
                os.chmod(final, 0o555)
                _fsync_dir(self.versions_dir)
            return version
        except BaseException:
            _remove_tree(work)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(str(work) + ".lock")
            os.close(lock_fd)

    def _merge_metadata(self, src: Path, metadata: Metadata | dict[str, Any] | None) -> Metadata:
        base: dict[str, Any] = {}
        carried = src / MANIFEST_NAME
        if carried.is_file():
            try:
                old = json.loads(carried.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InvalidVersionFolder(f"{carried}: unreadable manifest ({exc})") from exc
            if isinstance(old, dict):
                keys = ("dataset_fingerprint", "model_config", "metrics", "code_version", "extra")
                base = {k: old[k] for k in keys if k in old}
        given = parse_metadata(metadata).model_dump(by_alias=True, exclude_unset=True)
        return parse_metadata({**base, **given})

    def _new_version_id(self, files: dict[str, FileEntry]) -> tuple[str, str]:
        """A sortable, unique id ``vYYYYMMDD-HHMMSS-mmm-<content hash>``; call under the store lock.

        Ids must sort in publish order even when two publishes land in the same millisecond or the clock
        steps back, so the timestamp is pushed past the newest existing id when needed.
        """
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        existing = [p.name for p in self.versions_dir.iterdir() if VERSION_RE.match(p.name)]
        if existing:
            newest = max(existing)
            newest_ts = datetime.strptime(newest[1:20], "%Y%m%d-%H%M%S-%f").replace(tzinfo=UTC)
            if now <= newest_ts:
                now = newest_ts + timedelta(milliseconds=1)
        content = json.dumps({k: v.sha256 for k, v in sorted(files.items())}).encode()
        short = hashlib.sha256(content + now.isoformat().encode()).hexdigest()[:8]
        version = f"v{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{short}"
        return version, utc_now_iso(now)

    # ------------------------------------------------------------------ lookup
    def resolve(self, ref: str | None = None) -> str:
        """A version id from an id or alias: ``current`` (default), ``previous`` (before it), ``latest``."""
        ref = ref or "current"
        if ref == "current":
            return self.current()
        if ref == "previous":
            hist = self._read_history()
            if len(hist) < 2:
                raise NoPreviousVersion("no previously promoted version")
            return hist[-2]
        if ref == "latest":
            versions = self._version_ids()
            if not versions:
                raise VersionNotFound(f"store {self.root} has no versions")
            return versions[-1]
        if not VERSION_RE.match(ref):
            raise VersionNotFound(
                f"{ref!r} is not a version id (expected like v20260101-120000-000-0123abcd) "
                f"or one of {', '.join(ALIASES)}"
            )
        if not (self.versions_dir / ref).is_dir():
            raise VersionNotFound(f"version {ref} not found in {self.root}")
        return ref

    def path(self, version: str) -> Path:
        return self.versions_dir / self.resolve(version)

    def current(self) -> str:
        try:
            text = self._current_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise NoCurrentVersion(f"no version has been promoted in {self.root}") from None
        if not VERSION_RE.match(text):
            raise ModelStoreError(f"{self._current_file} is corrupt: {text[:80]!r}")
        return text

    def _current_or_none(self) -> str | None:
        try:
            return self.current()
        except NoCurrentVersion:
            return None

    def _version_ids(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if VERSION_RE.match(p.name) and p.is_dir())

    def manifest(self, version: str) -> Manifest:
        """The parsed manifest (schema-checked, not checksum-verified)."""
        vid = self.resolve(version)
        path = self.versions_dir / vid / MANIFEST_NAME
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(vid, [f"{MANIFEST_NAME}: missing"]) from None
        try:
            m = Manifest.parse(text)
        except ValueError as exc:
            raise IntegrityError(vid, [f"{MANIFEST_NAME}: {exc}"]) from None
        if m.version != vid:
            raise IntegrityError(vid, [f"{MANIFEST_NAME}: names version {m.version}, folder is {vid}"])
        return m

    def show(self, version: str) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (with ``promoted`` added)."""
        m = self.manifest(version)
        out = m.model_dump(mode="json", by_alias=True)
        out["promoted"] = m.version == self._current_or_none()
        return out

    def list(self) -> list[VersionInfo]:
        """All versions, oldest first."""
        cur = self._current_or_none()
        hist = self._read_history()
        prev = hist[-2] if len(hist) >= 2 else None
        rows = []
        for vid in self._version_ids():
            size = sum(p.stat().st_size for p in (self.versions_dir / vid).rglob("*") if p.is_file())
            try:
                m = self.manifest(vid)
                metrics = m.metrics.model_dump()
                rows.append(VersionInfo(vid, m.created_at, metrics, size, vid == cur, vid == prev))
            except IntegrityError as exc:
                rows.append(VersionInfo(vid, None, {}, size, vid == cur, vid == prev, error=str(exc)))
        return rows

    # ------------------------------------------------------------------ verify / open
    def verify(self, version: str) -> Manifest:
        """Recompute every file's size and sha256; `IntegrityError` names each missing/extra/changed file."""
        vid = self.resolve(version)
        m = self.manifest(vid)
        folder = self.versions_dir / vid
        problems = []
        on_disk = set()
        for p in folder.rglob("*"):
            if p.is_symlink() or not p.is_dir():
                on_disk.add(p.relative_to(folder).as_posix())
        on_disk.discard(MANIFEST_NAME)
        for name in sorted(on_disk - set(m.files)):
            problems.append(f"{name}: extra file not in manifest")
        for name, entry in sorted(m.files.items()):
            p = folder / name
            if name not in on_disk:
                problems.append(f"{name}: missing")
                continue
            if p.is_symlink() or not p.is_file():
                problems.append(f"{name}: not a regular file")
                continue
            size = p.stat().st_size
            if size != entry.size:
                problems.append(f"{name}: size {size} != manifest {entry.size}")
                continue
            _, digest = sha256_file(p)
            if digest != entry.sha256:
                problems.append(f"{name}: sha256 changed")
        if problems:
            raise IntegrityError(vid, problems)
        return m

    def open_version(self, version: str | None = None, verify: bool = True) -> VersionHandle:
        """Open a version (default: current) for serving; verified unless ``verify=False``."""
        vid = self.resolve(version)
        m = self.verify(vid) if verify else self.manifest(vid)
        return VersionHandle(version=vid, path=self.versions_dir / vid, manifest=m)

    # ------------------------------------------------------------------ promote / rollback
    def _read_history(self) -> list[str]:
        try:
            data = json.loads(self._history_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise ModelStoreError(f"{self._history_file} is corrupt: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("promotions"), list):
            raise ModelStoreError(f"{self._history_file} is corrupt: expected {{'promotions': [...]}}")
        return [str(e["version"]) for e in data["promotions"]]

    def _write_pointer(self, history: list[str]) -> None:
        """Write history then CURRENT, each by temp file + os.replace (readers see old or new, never half)."""
        doc = {"promotions": [{"version": v} for v in history]}
        atomic.write_bytes(self._history_file, (json.dumps(doc, indent=1) + "\n").encode())
        if history:
            atomic.write_bytes(self._current_file, (history[-1] + "\n").encode())
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._current_file)
        _fsync_dir(self.root)

    def promote(self, version: str) -> str:
        """Verify ``version`` and make it current; the one it replaces becomes the rollback target."""
        vid = self.resolve(version)
        self.verify(vid)
        with self._locked():
            if not (self.versions_dir / vid).is_dir():  # gc may have run between verify and lock
                raise VersionNotFound(f"version {vid} not found in {self.root}")
            hist = self._read_history()
            cur = self._current_or_none()
            if cur is not None and (not hist or hist[-1] != cur):
                hist.append(cur)  # CURRENT set by hand or an older store: keep it as the rollback target
            if cur != vid:
                hist.append(vid)
                self._write_pointer(hist)
        return vid

    def rollback(self) -> str:
        """Make the previously promoted version current again and return it."""
        with self._locked():
            hist = self._read_history()
            cur = self._current_or_none()
            if cur is None:
                raise NoCurrentVersion(f"no version has been promoted in {self.root}")
            if hist and hist[-1] == cur:
                hist.pop()
            if not hist:
                raise NoPreviousVersion(f"no version was promoted before {cur}; nothing to roll back to")
            target = hist[-1]
            self.verify(target)
            self._write_pointer(hist)
        return target

    # ------------------------------------------------------------------ gc
    def gc(self, keep: int = 3) -> list[str]:
        """Delete all but the newest ``keep`` versions, never the current or previous promoted one.

        Also removes leftovers of publishes whose process died. Returns the deleted version ids.
        """
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        with self._locked():
            versions = self._version_ids()
            hist = self._read_history()
            protected = set(versions[len(versions) - keep :] if keep else [])
            protected.update(hist[-2:])
            cur = self._current_or_none()
            if cur:
                protected.add(cur)
            doomed = [v for v in versions if v not in protected]
            for vid in doomed:
                # Rename first so the version disappears at once even if deleting the files is slow or fails.
                trash = self.tmp_dir / f"trash-{vid}-{uuid.uuid4().hex[:8]}"
                os.chmod(self.versions_dir / vid, stat.S_IRWXU)  # moving a folder needs write on it
                os.rename(self.versions_dir / vid, trash)
                _remove_tree(trash)
            if doomed:
                _fsync_dir(self.versions_dir)
                kept = [v for v in hist if v not in doomed]
                # drop repeats that deleting created (a, x, a -> a)
                kept = [v for i, v in enumerate(kept) if i == 0 or kept[i - 1] != v]
                if kept != hist:
                    self._write_pointer(kept)
            self._clean_tmp()
        return doomed

    def _clean_tmp(self) -> None:
        for p in self.tmp_dir.iterdir():
            if p.name.startswith("trash-"):
                _remove_tree(p)
            elif p.name.startswith("publish-") and p.name.endswith(".lock") and p.is_file():
                if not Path(str(p)[: -len(".lock")]).exists():
                    _unlink_if_unlocked(p)  # left by a publisher that died after its rename
            elif p.name.startswith("publish-") and p.is_dir():
                lock = Path(str(p) + ".lock")
                if not lock.exists():
                    _remove_tree(p)
                    continue
                fd = os.open(lock, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live publish
                finally:
                    os.close(fd)
                _remove_tree(p)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)


# ---------------------------------------------------------------------- file helpers
def _unlink_if_unlocked(lock: Path) -> None:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock)


def _scan_source(src: Path) -> list[str]:
    """Relative names of the files to publish; refuses forbidden types and symlinks, naming each offender."""
    names, problems = [], []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_symlink():
            problems.append(f"{rel}: symlinks are not stored (copy the file in)")
        elif p.is_dir():
            continue
        elif not p.is_file():
            problems.append(f"{rel}: not a regular file")
        elif rel != MANIFEST_NAME:
            why = check_relative_name(rel)
            if why:
                problems.append(f"{rel}: {why}")
            else:
                names.append(rel)
    if problems:
        raise InvalidVersionFolder(f"cannot publish {src}: " + "; ".join(problems))
    if not names:
        raise InvalidVersionFolder(f"cannot publish {src}: it holds no files")
    return names


def _copy_hashed(src: Path, dst: Path) -> FileEntry:
    """Copy one file, hashing the bytes as they are written (one read pass), and fsync it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(_COPY_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return FileEntry(size=size, sha256=h.hexdigest())


def _write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dirs_bottom_up(root: Path) -> list[Path]:
    return [Path(d) for d, _, _ in os.walk(root, topdown=False)]


def _make_read_only(root: Path, keep_top_writable: bool = False) -> None:
    for d, _, files in os.walk(root):
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
    for d in _dirs_bottom_up(root):
        if not (keep_top_writable and d == root):
            os.chmod(d, 0o555)


def _remove_tree(root: Path) -> None:
    """Delete a (possibly read-only) tree: read-only folders are made writable first so files can go."""
    if not root.exists():
        return
    for d, _, _ in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(d, stat.S_IRWXU)
    shutil.rmtree(root, ignore_errors=True)

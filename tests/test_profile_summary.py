"""benchmarks/profile_summary.py: per-thread shares and inclusive function shares of a py-spy raw profile."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.profile_summary import frame_name, main, summarise  # noqa: E402

RAW = [
    "thread (1): MainThread;run (/x/server.py:10);bfs (/x/graph.py:5);bfs (/x/graph.py:7) 30",
    "thread (1): MainThread;run (/x/server.py:10);http (/x/h.py:2) 10",
    "thread (2): worker;encode (/x/onnx.py:9) 20",
    "garbage line",
]


def test_frames_drop_line_numbers_and_folders() -> None:
    assert frame_name("bfs (/x/graph.py:5)") == "bfs graph.py"
    assert frame_name("<module>") == "<module>"


def test_inclusive_shares_count_a_recursive_function_once() -> None:
    per_thread, inclusive = summarise(RAW)
    assert per_thread == {"thread (1): MainThread": 40, "thread (2): worker": 20}
    main_thread = inclusive["thread (1): MainThread"]
    assert main_thread["run server.py"] == 40 and main_thread["bfs graph.py"] == 30
    assert main_thread["http h.py"] == 10


def test_cli_prints_core_share_and_refuses_other_files(tmp_path, capsys) -> None:
    raw = tmp_path / "prof.txt"
    raw.write_text("\n".join(RAW))
    main([str(raw), "--seconds", "1", "--rate", "40"])
    out = capsys.readouterr().out
    assert "MainThread: 40 samples, 100 % of a core" in out and "75.0 %  bfs graph.py" in out
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    with pytest.raises(SystemExit):
        main([str(empty)])

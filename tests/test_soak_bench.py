"""benchmarks/soak_bench.py's pure parts: answer classification, window totals, memory slopes, the summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.soak_bench import classify, slope_per_hour, summarize, totals  # noqa: E402

NO_SOCKET = {"connect": 0, "read": 0, "write": 0, "timeout": 0}


def test_classify_separates_documented_503s_from_errors() -> None:
    raw = {
        "200": 90,
        "201": 8,
        "201 replayed": 1,
        "503 stored false": 3,
        "503 stored unknown": 2,
        "503 shed": 4,
        "503 no model": 1,  # a loaded service that says "no model": an error
        "503 stored false no retry-after": 1,  # the contract's header missing: an error
        "503": 1,  # a 503 the contract does not name
        "500": 2,
        "422": 1,
    }
    out = classify(raw, {**NO_SOCKET, "timeout": 5})
    assert out["ok"] == {"recommend 200": 90, "write 201": 8, "write 201 replayed": 1}
    assert out["documented_503"] == {
        "write 503 stored false": 3,
        "write 503 stored unknown": 2,
        "recommend 503 shed (prompt pool full)": 4,
    }
    assert out["errors"] == {
        "status 503 no model": 1,
        "status 503 stored false no retry-after": 1,
        "status 503": 1,
        "status 500": 2,
        "status 422": 1,
        "socket timeout": 5,
    }
    assert (out["n_ok"], out["n_documented_503"], out["n_errors"]) == (99, 9, 11)


def test_classify_clean_window() -> None:
    out = classify({"200": 10, "201": 1}, NO_SOCKET)
    assert out["n_errors"] == 0 and out["errors"] == {} and out["n_documented_503"] == 0


def test_slope_per_hour() -> None:
    t = [0.0, 600.0, 1200.0, 1800.0]
    assert slope_per_hour(t, [100.0, 101.0, 102.0, 103.0]) == pytest.approx(6.0)  # 1 MiB per 10 min
    assert slope_per_hour(t, [5.0, 5.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert slope_per_hour(t, [100.0, None, 102.0, 103.0]) == pytest.approx(6.0)  # Redis down: no sample
    assert slope_per_hour(t[:2], [1.0, 2.0]) is None


def _window(t_s, p99, answers, rss, redis_mib, requests=100, seconds=10.0):
    return {
        "t_s": t_s,
        "seconds": seconds,
        "requests": requests,
        "p50_ms": p99 / 4,
        "p99_ms": p99,
        "answers": classify(answers, NO_SOCKET),
        "writes_stored": answers.get("201", 0),
        "service_rss_mib": rss,
        "redis_used_memory_mib": redis_mib,
    }


def test_totals_and_summary() -> None:
    windows = [
        _window(5, 40, {"200": 90, "201": 10}, 300.0, 10.0),
        _window(15, 50, {"200": 90, "201": 10}, 310.0, 11.0),
        _window(25, 400, {"200": 80, "201": 5, "503 stored false": 5, "500": 1}, 310.0, None),
        _window(35, 60, {"200": 90, "201": 10}, 310.0, 12.0),
        _window(45, 50, {"200": 90, "201": 10}, 310.0, 12.5),
    ]
    tot = totals(windows)
    assert tot["requests"] == 500
    assert tot["documented_503"] == {"write 503 stored false": 5}
    assert tot["errors"] == {"status 500": 1}
    events = [{"event": "redis restart", "t_s": 24.0}]
    s = summarize(windows, events, duration_s=50)
    assert s["n_errors"] == 1 and s["n_documented_503"] == 5
    assert s["rps_mean"] == 10.0
    assert s["p99_ms_max_of_windows"] == 400
    assert s["p99_ms_median_of_windows"] == 50
    # second half: windows at 25, 35, 45 s; RSS flat, Redis 12 -> 12.5 MiB over 10 s (the down window skipped)
    assert s["service_rss_mib_per_hour_second_half"] == 0.0
    assert s["service_rss_mib_second_half"] == [310.0, 310.0]
    assert s["redis_used_memory_mib_per_hour_second_half"] is None  # 2 samples only
    assert events[0]["errors_around"] == 1 and events[0]["documented_503_around"] == 5
    assert events[0]["p99_ms_max_around"] == 400


def test_summary_bytes_per_stored_write() -> None:
    # Redis grows 1 MiB per 100 s while 100 writes are stored per 10-s window: 1 MiB / 1000 writes
    windows = [_window(t, 50, {"200": 90, "201": 100}, 300.0, 10.0 + t / 100) for t in range(0, 1000, 10)]
    s = summarize(windows, [], duration_s=1000)
    assert s["redis_used_memory_mib_per_hour_second_half"] == pytest.approx(36.0)
    assert s["redis_bytes_per_stored_write"] == round(2**20 / 1000)


def test_prepare_inputs_draws_only_items_both_versions_know(tmp_path, monkeypatch) -> None:
    import json

    from benchmarks import soak_bench

    a, b, work = tmp_path / "a", tmp_path / "b", tmp_path / "work"
    for d in (a, b, work):
        d.mkdir()
    (a / "user_ids.json").write_text(json.dumps(["u1", "u 2"]))
    (a / "item_ids.json").write_text(json.dumps(["i1", "i2", "i3"]))
    (b / "item_ids.json").write_text(json.dumps(["i3", "i1"]))
    monkeypatch.setattr(soak_bench, "draw_users", lambda vdir, users, how, n: list(users))
    users_file, items_file = soak_bench.prepare_inputs(work, a, b)
    assert items_file.read_text().split() == ['"i1"', '"i3"']  # A's order, minus what B lacks
    assert users_file.read_text().split() == ["u1", "u%202"]
    _, only_a = soak_bench.prepare_inputs(work, a)
    assert only_a.read_text().split() == ['"i1"', '"i2"', '"i3"']

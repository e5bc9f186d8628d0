"""The replay benchmark's scoring helpers: per-user metrics and the paired bootstrap its table reports."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.replay_bench import metrics_of, paired_gain  # noqa: E402


def test_metrics_keep_each_users_figures_in_target_order() -> None:
    targets = {"u1": {"a", "b"}, "u2": {"c"}, "u3": {"z"}}
    ranked = {"u1": ["a", "x", "b"], "u2": ["x", "c"], "u3": ["x"]}
    m = metrics_of(ranked, targets, k=2)
    assert m["per_user"]["recall@2"] == [0.5, 1.0, 0.0]
    assert m["recall@2"] == np.mean([0.5, 1.0, 0.0]) and m["users"] == 3
    # u2's hit at rank 2 of an ideal rank 1
    assert math.isclose(m["per_user"]["ndcg@2"][1], round(1 / math.log2(3), 5))


def test_paired_gain_is_exact_for_a_uniform_lift_and_wide_for_noise() -> None:
    rng = np.random.default_rng(3)
    base = rng.random(200)
    lift = paired_gain(list(base * 1.1), list(base))
    assert math.isclose(lift["gain"], 0.1, rel_tol=1e-9)
    assert math.isclose(lift["lo"], 0.1, rel_tol=1e-6) and math.isclose(lift["hi"], 0.1, rel_tol=1e-6)
    # two unrelated score lists over 50 users: the interval is wide and holds the point estimate
    noise = paired_gain(list(rng.random(50)), list(rng.random(50)))
    assert noise["lo"] < noise["gain"] < noise["hi"] and noise["hi"] - noise["lo"] > 0.1


def test_paired_gain_refuses_unpaired_or_empty_input() -> None:
    for a, b in (([1.0], [1.0, 2.0]), ([], []), ([1.0], [0.0])):
        assert all(math.isnan(v) for v in paired_gain(a, b).values())


def test_file_order_time_is_each_users_relative_position() -> None:
    from benchmarks.replay_bench import day0_first, file_order_time

    users = np.asarray(["a", "b", "a", "a", "b", "a"], dtype=object)
    ts = file_order_time(users)
    assert ts.tolist() == [0.0, 0.0, 0.25e6, 0.5e6, 0.5e6, 0.75e6]
    # sorted by it, each user's own order is kept, and the per-user day 0 takes each user's first half
    order = np.argsort(ts, kind="stable")
    items = np.arange(6)[order]
    u, i, _, n0 = day0_first(users[order], items, ts[order], 0.5, "per-user")
    assert n0 == 3 and sorted(i[:n0].tolist()) == [0, 1, 2]
    assert [x for x in i[n0:].tolist()] == [3, 4, 5]

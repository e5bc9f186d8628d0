"""Graph attention bias: config, relation values by hand, prompt-level bias on a hand-drawn graph.

PATH graph (3 users x 4 items; global ids: users 0..2, items 3..6):

    i0 — u0 — i1 — u1 — i2 — u2 — i3
   (3)  (0)  (4)  (1)  (5)  (2)  (6)

With H = 5, c = 6/11 the relation is: same node 6/11, edge 1, 2 hops 4/11, 3 hops 3/11, 4 hops 2/11,
5 hops 1/11, farther 0.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from graphprompt.bias import BiasConfig, prompt_bias, prompt_biases, relation_bias
from graphprompt.graph import BipartiteGraph

EDGES = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)]


@pytest.fixture
def path() -> BipartiteGraph:
    u, i = zip(*EDGES, strict=True)
    return BipartiteGraph.from_matrix(sp.csr_matrix((np.ones(6), (u, i)), shape=(3, 4)))


# ---------------------------------------------------------------- config
def test_config_defaults_and_json_round_trip():
    cfg = BiasConfig()
    assert (cfg.max_hops, cfg.c, cfg.enabled, cfg.mode) == (5, 6 / 11, True, "hops")
    other = BiasConfig(max_hops=3, c=0.5, enabled=False, mode="ones")
    text = other.to_json()
    assert json.loads(text) == {"max_hops": 3, "c": 0.5, "enabled": False, "mode": "ones"}
    assert BiasConfig.from_json(text) == other
    assert BiasConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_hops": 0}, "max_hops"),
        ({"max_hops": 2.5}, "max_hops"),
        ({"c": float("nan")}, "finite"),
        ({"mode": "distance"}, "mode"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BiasConfig(**kwargs)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown field"):
        BiasConfig.from_dict({"max_hops": 5, "scale": 2.0})


# ---------------------------------------------------------------- relation values
def test_relation_bias_values_by_hand():
    dist = np.array([0, 1, 2, 3, 4, 5, 6, 7], dtype=np.int8)
    direct = dist == 1
    got = relation_bias(dist, direct)
    assert got.dtype == np.float32
    want = np.array([6, 11, 4, 3, 2, 1, 0, 0]) / 11
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(relation_bias(dist, direct, BiasConfig()), want, rtol=1e-6)


def test_relation_bias_other_h_and_c():
    dist = np.array([[0, 1], [1, 3]])
    direct = np.array([[False, True], [True, False]])
    got = relation_bias(dist, direct, 3, 1.0)  # c * (A + max(0, 4 - d) / 4)
    np.testing.assert_allclose(got, [[1.0, 1.75], [1.75, 0.25]])
    got = relation_bias(dist, direct, BiasConfig(max_hops=3, c=2.0))
    np.testing.assert_allclose(got, [[2.0, 3.5], [3.5, 0.5]])
    with pytest.raises(ValueError, match="differ in shape"):
        relation_bias(dist, direct[0])
    with pytest.raises(ValueError, match="not both"):
        relation_bias(dist, direct, BiasConfig(), c=1.0)


# ---------------------------------------------------------------- prompt bias
def test_prompt_bias_by_hand(path):
    # positions: word, u0, i1, word, i3, u0 (repeated), i0
    node_ids = np.array([-1, 0, 4, -1, 6, 0, 3])
    b = prompt_bias(node_ids, path)
    assert b.dtype == np.float32 and b.shape == (7, 7)
    s = 11 * b
    # word rows / columns are zero
    assert not s[[0, 3]].any() and not s[:, [0, 3]].any()
    # u0-u0 (same node, also the repeated position) 6; u0-i1 edge 11; u0-i3 5 hops 1; u0-i0 edge 11
    assert s[1, 1] == pytest.approx(6) and s[1, 5] == pytest.approx(6) and s[5, 1] == pytest.approx(6)
    assert s[1, 2] == pytest.approx(11) and s[5, 2] == pytest.approx(11)
    assert s[1, 4] == pytest.approx(1) and s[4, 5] == pytest.approx(1)
    assert s[1, 6] == pytest.approx(11)
    # i1-i3: 4 hops -> 2; i0-i3: 6 hops -> 0; i0-i1: 2 hops -> 4
    assert s[2, 4] == pytest.approx(2) and s[6, 4] == pytest.approx(0) and s[6, 2] == pytest.approx(4)
    np.testing.assert_array_equal(b, b.T)


def test_prompt_bias_with_live_and_removed_edges(path):
    node_ids = np.array([0, 6, -1, 3])  # u0, i3, word, i0
    live = prompt_bias(node_ids, path, extra_edges=(np.array([0]), np.array([3])))  # u0 - i3 added
    assert 11 * live[0, 1] == pytest.approx(11)  # now an edge
    assert 11 * live[3, 1] == pytest.approx(4)  # i0 u0 i3: 2 hops
    cut = prompt_bias(node_ids, path, removed_edges=(np.array([0]), np.array([0])))  # u0 - i0 removed
    assert cut[0, 3] == 0.0  # i0 is now isolated: unreachable
    assert 11 * cut[0, 1] == pytest.approx(1)  # u0 - i3 still 5 hops


def test_prompt_bias_ablations(path):
    node_ids = np.array([-1, 0, 6, 6])
    ones = prompt_bias(node_ids, path, BiasConfig(mode="ones"))
    np.testing.assert_array_equal(ones, np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]))
    off = prompt_bias(node_ids, path, BiasConfig(enabled=False))
    assert off.shape == (4, 4) and not off.any()
    h3 = prompt_bias(node_ids, path, BiasConfig(max_hops=3))
    assert h3[1, 2] == 0.0  # u0 - i3 is 5 hops, beyond H = 3


def test_prompt_bias_words_only_and_empty(path):
    assert not prompt_bias(np.array([-1, -1]), path).any()
    assert prompt_bias(np.array([], dtype=np.int64), path).shape == (0, 0)


def test_prompt_bias_bad_input(path):
    with pytest.raises(ValueError, match="-1 for words"):
        prompt_bias(np.array([0, -2]), path)
    with pytest.raises(ValueError, match="1-D"):
        prompt_bias(np.zeros((2, 2), dtype=np.int64), path)
    with pytest.raises(ValueError, match="integers"):
        prompt_bias(np.array([0.5]), path)
    with pytest.raises(ValueError, match="out of range"):
        prompt_bias(np.array([7]), path)


def test_prompt_biases_match_single_calls(path):
    prompts = [np.array([-1, 0, 4]), np.array([6, 6, -1, 1]), np.array([-1]), np.array([3, 2, 5])]
    many = prompt_biases(prompts, path)
    for p, b in zip(prompts, many, strict=True):
        np.testing.assert_array_equal(b, prompt_bias(p, path))
    removed = [None, (np.array([2]), np.array([3])), None, (np.array([1]), np.array([2]))]
    per = prompt_biases(prompts, path, removed_edges=removed)
    for p, r, b in zip(prompts, removed, per, strict=True):
        np.testing.assert_array_equal(b, prompt_bias(p, path, removed_edges=r))
    assert per[1][0, 3] == 0.0  # i3 cut off from u1 once u2 - i3 is removed

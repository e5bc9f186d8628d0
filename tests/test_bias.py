"""Graph attention bias: config, relation values by hand, and over distances on a hand-drawn graph.

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

from graphprompt.bias import BiasConfig, relation_bias
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
    got = relation_bias(dist, direct, BiasConfig())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.array([6, 11, 4, 3, 2, 1, 0, 0]) / 11, rtol=1e-6)


def test_relation_bias_other_h_and_c():
    dist = np.array([[0, 1], [1, 3]])
    direct = np.array([[False, True], [True, False]])
    got = relation_bias(dist, direct, BiasConfig(max_hops=3, c=1.0))  # c * (A + max(0, 4 - d) / 4)
    np.testing.assert_allclose(got, [[1.0, 1.75], [1.75, 0.25]])
    got = relation_bias(dist, direct, BiasConfig(max_hops=3, c=2.0))
    np.testing.assert_allclose(got, [[2.0, 3.5], [3.5, 0.5]])
    with pytest.raises(ValueError, match="differ in shape"):
        relation_bias(dist, direct[0], BiasConfig())


# ---------------------------------------------------------------- on the graph
def test_relation_bias_over_path_distances_by_hand(path):
    """The prompt builder's composition: BFS distances among distinct nodes, then the relation."""
    nodes = np.array([0, 4, 6, 3])  # u0, i1, i3, i0
    s = 11 * relation_bias(d := path.hop_distances(nodes, 5), d == 1, BiasConfig())
    # u0-u0 same node 6; u0-i1 edge 11; u0-i3 5 hops 1; u0-i0 edge 11
    np.testing.assert_allclose(s[0], [6, 11, 1, 11], rtol=1e-6)
    # i1-i3: 4 hops -> 2; i0-i3: 6 hops -> 0; i0-i1: 2 hops -> 4
    assert s[1, 2] == pytest.approx(2) and s[3, 2] == pytest.approx(0) and s[3, 1] == pytest.approx(4)
    np.testing.assert_array_equal(s, s.T)

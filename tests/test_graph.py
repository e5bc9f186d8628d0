"""BipartiteGraph: construction, neighbourhoods, packed form, hop distances, persistence.

Hand-drawn graphs (global node ids: users 0..U-1, items U..):

PATH (3 users x 4 items), a path of 7 nodes, so every distance from 1 to 6 occurs:

    i0 — u0 — i1 — u1 — i2 — u2 — i3
   (3)  (0)  (4)  (1)  (5)  (2)  (6)      d(a, b) = |position(a) - position(b)|

SPLIT (3 users x 4 items), two components:

    i0 — u0 — i1 — u1 — i2        u2 — i3
   (3)  (0)  (4)  (1)  (5)       (2)  (6)

NBR (4 users x 5 items), for neighbourhood rankings:

    u0: i0 i1 i2     u1: i0 i1 i3     u2: i1 i2 i4     u3: i0 i4
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path
from shared_data import DATASETS

from graphprompt.graph import BipartiteGraph


def graph_from_edges(n_users: int, n_items: int, edges: list[tuple[int, int]]) -> BipartiteGraph:
    u, i = zip(*edges, strict=True)
    m = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(n_users, n_items))
    return BipartiteGraph.from_matrix(m)


# neighbourhood() has no defaults of its own (PromptConfig holds them); these tests ask for wide ones
WIDE = {"n_users": 20, "n_items": 20, "item_norm": 0.0}
PATH_EDGES = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)]
PATH_ORDER = [3, 0, 4, 1, 5, 2, 6]  # node ids along the path
SPLIT_EDGES = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)]
NBR_EDGES = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 3), (2, 1), (2, 2), (2, 4), (3, 0), (3, 4)]


@pytest.fixture
def path() -> BipartiteGraph:
    return graph_from_edges(3, 4, PATH_EDGES)


@pytest.fixture
def split() -> BipartiteGraph:
    return graph_from_edges(3, 4, SPLIT_EDGES)


@pytest.fixture
def nbr() -> BipartiteGraph:
    return graph_from_edges(4, 5, NBR_EDGES)


def path_distance(a: int, b: int) -> int:
    return abs(PATH_ORDER.index(a) - PATH_ORDER.index(b))


# ---------------------------------------------------------------- construction
def test_from_matrix_binarises_and_drops_zeros():
    m = sp.csr_matrix(np.array([[5.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    m.data[1] = 0.0  # an explicit zero is not an edge
    m2 = sp.coo_matrix(([3.0, 1.0], ([1, 1], [1, 1])), shape=(2, 3))  # duplicate entries are one edge
    g = BipartiteGraph.from_matrix(m + m2)
    assert g.n_users == 2 and g.n_items == 3 and g.n_edges == 2
    assert g.user_items(0).tolist() == [0]
    assert g.user_items(1).tolist() == [1]
    assert g.user_items(0).dtype == np.int64
    assert g.item_users(1).tolist() == [1]
    assert (g.ui.data == 1).all() and (g.iu.toarray() == g.ui.toarray().T).all()


def test_node_ids(path):
    assert path.n_nodes == 7
    assert path.item_node(2) == 5
    assert path.node_item(5) == 2
    assert path.is_user_node(np.array([0, 2, 3])).tolist() == [True, True, False]


def test_bad_input_is_named(path):
    with pytest.raises(ValueError, match="user index 3 out of range"):
        path.user_items(3)
    with pytest.raises(ValueError, match="node id out of range"):
        path.hop_distances(np.array([0, 7]), 5)
    with pytest.raises(ValueError, match="integer"):
        path.hop_distances(np.array([0.0, 1.0]), 5)
    with pytest.raises(ValueError, match="1-D"):
        path.hop_distances(np.array([[0, 1]]), 5)
    with pytest.raises(ValueError, match="max_hops"):
        path.hop_distances(np.array([0, 1]), max_hops=0)
    with pytest.raises(ValueError, match="differ in length"):
        path.hop_distances(np.array([0, 3]), 5, extra_edges=(np.array([0, 1]), np.array([2])))
    with pytest.raises(ValueError, match="edge item index out of range"):
        path.hop_distances(np.array([0, 3]), 5, removed_edges=(np.array([0]), np.array([4])))
    with pytest.raises(ValueError, match="item index out of range"):
        path.neighbourhood(None, np.array([4]), **WIDE)
    with pytest.raises(ValueError, match="needs a user index or an items array"):
        path.neighbourhood(None, **WIDE)
    with pytest.raises(ValueError, match="2-D"):
        BipartiteGraph.from_matrix(np.zeros(3))


# ---------------------------------------------------------------- hop distances
def test_path_distances_every_pair(path):
    nodes = np.array(PATH_ORDER)
    d = path.hop_distances(nodes, 5)
    assert d.dtype == np.int8 and d.shape == (7, 7)
    expected = np.array([[min(path_distance(a, b), 6) for b in nodes] for a in nodes])
    np.testing.assert_array_equal(d, expected)
    # by hand: i0-i3 is 6 hops (beyond H=5: reported as 6), u0-i3 is 5, i0-i2 is 4
    assert d[0, 6] == 6 and d[1, 6] == 5 and d[0, 4] == 4 and np.all(np.diag(d) == 0)


@pytest.mark.parametrize("max_hops", [1, 2, 3, 4, 6])
def test_path_distances_other_max_hops(path, max_hops):
    nodes = np.array(PATH_ORDER)
    d = path.hop_distances(nodes, max_hops=max_hops)
    far = max_hops + 1
    expected = np.array([[min(path_distance(a, b), far) for b in nodes] for a in nodes])
    np.testing.assert_array_equal(d, expected)


def test_unreachable_nodes(split):
    d = split.hop_distances(np.array([0, 2, 6, 5]), 5)
    # u0-u2: other component; u0-i3: other component; u2-i3: edge; u0-i2: u0 i1 u1 i2 = 3; u2-i2: unreachable
    expected = np.array(
        [
            [0, 6, 6, 3],
            [6, 0, 1, 6],
            [6, 1, 0, 6],
            [3, 6, 6, 0],
        ]
    )
    np.testing.assert_array_equal(d, expected)


def test_repeated_and_unordered_nodes(path):
    d = path.hop_distances(np.array([6, 0, 6, 3]), 5)
    expected = np.array([[0, 5, 0, 6], [5, 0, 5, 1], [0, 5, 0, 6], [6, 1, 6, 0]])
    np.testing.assert_array_equal(d, expected)


def test_only_users_or_only_items(path):
    np.testing.assert_array_equal(
        path.hop_distances(np.array([0, 1, 2]), 5), [[0, 2, 4], [2, 0, 2], [4, 2, 0]]
    )
    np.testing.assert_array_equal(path.hop_distances(np.array([3, 6]), 5), [[0, 6], [6, 0]])
    assert path.hop_distances(np.array([], dtype=np.int64), 5).shape == (0, 0)


def test_extra_edges(path):
    nodes = np.array([0, 6, 3, 2, 4])  # u0, i3, i0, u2, i1
    d = path.hop_distances(nodes, 5, extra_edges=(np.array([0]), np.array([3])))  # live edge u0 - i3
    # u0-i3 now 1; i0-i3 = i0 u0 i3 = 2; u0-u2 = u0 i3 u2 = 2; i1-i3 = i1 u0 i3 = 2; i0-u2 = 3
    expected = np.array(
        [
            [0, 1, 1, 2, 1],
            [1, 0, 2, 1, 2],
            [1, 2, 0, 3, 2],
            [2, 1, 3, 0, 3],
            [1, 2, 2, 3, 0],
        ]
    )
    np.testing.assert_array_equal(d, expected)
    # an extra edge that is already in the graph changes nothing
    same = path.hop_distances(nodes, 5, extra_edges=(np.array([0, 0]), np.array([0, 0])))
    np.testing.assert_array_equal(same, path.hop_distances(nodes, 5))


def test_removed_edges(path):
    nodes = np.array(PATH_ORDER)
    d = path.hop_distances(nodes, 5, removed_edges=(np.array([1]), np.array([2])))  # cut u1 - i2
    left = PATH_ORDER[:4]  # i0 u0 i1 u1 | i2 u2 i3
    for a_i, a in enumerate(PATH_ORDER):
        for b_i, b in enumerate(PATH_ORDER):
            same_side = (a in left) == (b in left)
            want = path_distance(a, b) if same_side else 6
            assert d[a_i, b_i] == want, (a, b)
    # removing an edge that does not exist changes nothing
    same = path.hop_distances(nodes, 5, removed_edges=(np.array([0]), np.array([3])))
    np.testing.assert_array_equal(same, path.hop_distances(nodes, 5))


def test_removed_and_extra_edges_together(path):
    nodes = np.array([1, 5, 0, 6])  # u1, i2, u0, i3
    cut = (np.array([1]), np.array([2]))  # u1 - i2
    add = (np.array([0]), np.array([3]))  # u0 - i3
    d = path.hop_distances(nodes, 5, extra_edges=add, removed_edges=cut)
    # u1-i2 is now u1 i1 u0 i3 u2 i2 = 5
    assert d[0, 1] == 5 and d[1, 0] == 5
    assert d[2, 3] == 1 and d[0, 2] == 2
    # an edge both added and removed is absent (removal wins)
    d2 = path.hop_distances(nodes, 5, extra_edges=add, removed_edges=add)
    np.testing.assert_array_equal(d2, path.hop_distances(nodes, 5))


def test_direct_edges(path):
    nodes = np.array([0, 3, 4, 6, 2])  # u0, i0, i1, i3, u2
    a = path.direct_edges(nodes)
    assert a.dtype == bool
    expected = np.zeros((5, 5), bool)
    for p, q in [(0, 1), (0, 2), (4, 3)]:
        expected[p, q] = expected[q, p] = True
    np.testing.assert_array_equal(a, expected)
    b = path.direct_edges(
        nodes, extra_edges=(np.array([0]), np.array([3])), removed_edges=(np.array([0]), [1])
    )
    expected[0, 3] = expected[3, 0] = True  # u0 - i3 added
    expected[0, 2] = expected[2, 0] = False  # u0 - i1 removed
    np.testing.assert_array_equal(b, expected)
    np.testing.assert_array_equal(
        b, path.hop_distances(nodes, 5, (np.array([0]), np.array([3])), (np.array([0]), np.array([1]))) == 1
    )


def test_many_matches_single_calls_with_and_without_edge_changes(path):
    sets = [np.array(PATH_ORDER), np.array([0, 6]), np.array([2, 3, 3]), np.array([5])]
    many = path.hop_distances_many(sets, 5)
    for s, d in zip(sets, many, strict=True):
        np.testing.assert_array_equal(d, path.hop_distances(s, 5))
    # tiny budget: one set per chunk, same answer
    tiny = path.hop_distances_many(sets, 5, chunk_bytes=1)
    for a, b in zip(many, tiny, strict=True):
        np.testing.assert_array_equal(a, b)
    cut = (np.array([0]), np.array([1]))  # one edge change for every set
    changed = path.hop_distances_many(sets, 5, removed_edges=cut)
    for s, d in zip(sets, changed, strict=True):
        np.testing.assert_array_equal(d, path.hop_distances(s, 5, removed_edges=cut))
    assert changed[1][0, 1] == 6  # u0 - i3 with u0 - i1 cut: unreachable


def reference_distances(ui: np.ndarray | sp.spmatrix, nodes: np.ndarray, max_hops: int) -> np.ndarray:
    adj = sp.bmat([[None, sp.csr_matrix(ui)], [sp.csr_matrix(ui.T), None]])
    d = shortest_path(adj, unweighted=True, indices=nodes)[:, nodes]
    return np.where(d > max_hops, max_hops + 1, d).astype(np.int8)


@pytest.mark.parametrize("seed", range(6))
def test_random_graphs_against_scipy_shortest_path(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(5, 40)), int(rng.integers(5, 40))
    m = sp.random(n_users, n_items, density=rng.uniform(0.03, 0.15), random_state=rng, format="csr")
    g = BipartiteGraph.from_matrix(m)
    ui = (m.toarray() != 0).astype(float)
    extra = (rng.integers(0, n_users, 3), rng.integers(0, n_items, 3))
    eu, ei = np.nonzero(ui)
    pick = rng.choice(eu.size, size=min(4, eu.size), replace=False)
    removed = (eu[pick], ei[pick])
    ui_mod = ui.copy()
    ui_mod[extra] = 1
    ui_mod[removed] = 0
    sets = [rng.choice(n_users + n_items, size=int(rng.integers(1, 20))) for _ in range(4)]
    for max_hops in (3, 5, 40):  # 40: item balls grown over many co-occurrence hops
        for s, d in zip(sets, g.hop_distances_many(sets, max_hops), strict=True):
            np.testing.assert_array_equal(d, reference_distances(ui, s, max_hops))
        for s, d in zip(sets, g.hop_distances_many(sets, max_hops, extra, removed), strict=True):
            np.testing.assert_array_equal(d, reference_distances(ui_mod, s, max_hops))
            np.testing.assert_array_equal(g.direct_edges(s, extra, removed), d == 1)


def test_long_path_large_max_hops():
    """A 30-node path with max_hops=30 needs item balls of radius 16 (many item-item hops)."""
    n = 15
    edges = [(k, k) for k in range(n)] + [(k + 1, k) for k in range(n - 1)]
    g = graph_from_edges(n, n, edges)
    nodes = np.arange(2 * n)
    d = g.hop_distances(nodes, max_hops=30)
    ui = np.zeros((n, n))
    for u, i in edges:
        ui[u, i] = 1
    np.testing.assert_array_equal(d, reference_distances(ui, nodes, 30))
    assert d.max() == 29  # the two ends of the path
    np.testing.assert_array_equal(g.hop_distances(nodes, max_hops=7), reference_distances(ui, nodes, 7))


# ---------------------------------------------------------------- neighbourhoods
def test_neighbourhood_rankings_by_hand(nbr):
    nb = nbr.neighbourhood(0, **WIDE)
    assert nb.user == 0
    assert nb.items.tolist() == [0, 1, 2]
    # u1 shares i0 i1 (2), u2 shares i1 i2 (2) -> tie, smaller id first; u3 shares i0 (1)
    assert nb.co_users.tolist() == [1, 2, 3]
    assert nb.co_user_weight.tolist() == [2.0, 2.0, 1.0]
    # i4: via u2 (weight 2) and u3 (weight 1) = 3; i3: via u1 (weight 2) = 2
    assert nb.two_hop_items.tolist() == [4, 3]
    assert nb.two_hop_weight.tolist() == [3.0, 2.0]
    assert nb.co_users.dtype == np.int64 and nb.co_user_weight.dtype == np.float32
    small = nbr.neighbourhood(0, n_users=1, n_items=1, item_norm=0.0)
    assert small.co_users.tolist() == [1] and small.two_hop_items.tolist() == [4]
    empty = nbr.neighbourhood(0, n_users=0, n_items=0, item_norm=0.0)
    assert empty.co_users.size == 0 and empty.two_hop_items.size == 0


def test_neighbourhood_two_hop_degree_normalisation(nbr):
    # user 0: i4 co-occurs 3 times (degree 2), i3 twice (degree 1)
    half = nbr.neighbourhood(0, **{**WIDE, "item_norm": 0.5})
    assert half.two_hop_items.tolist() == [4, 3]  # 3/sqrt(2) > 2/1
    full = nbr.neighbourhood(0, **{**WIDE, "item_norm": 1.0})  # 3/2 < 2/1: the rarer item moves up
    assert full.two_hop_items.tolist() == [3, 4]
    assert full.two_hop_weight.tolist() == [2.0, 1.5]


def test_neighbourhood_ties_by_smaller_id(nbr):
    nb = nbr.neighbourhood(3, **WIDE)  # items i0 i4: u0 (i0), u1 (i0), u2 (i4) all share one item
    assert nb.co_users.tolist() == [0, 1, 2]
    assert nb.co_user_weight.tolist() == [1.0, 1.0, 1.0]
    assert nb.two_hop_items.tolist() == [1, 2, 3]  # i1: u0 u1 u2 = 3, i2: u0 u2 = 2, i3: u1 = 1
    tie = nbr.neighbourhood(None, np.array([3]), **WIDE)  # only u1 holds i3; its i0 and i1 tie at 1
    assert tie.user is None
    assert tie.co_users.tolist() == [1]
    assert tie.two_hop_items.tolist() == [0, 1]
    assert tie.two_hop_weight.tolist() == [1.0, 1.0]


def test_neighbourhood_cold_start_and_live_history(nbr):
    # duplicates dropped, first-occurrence order kept
    cold = nbr.neighbourhood(None, np.array([4, 2, 4]), **WIDE)
    assert cold.items.tolist() == [4, 2]
    assert cold.co_users.tolist() == [2, 0, 3]  # u2 holds both (2); u0 (i2), u3 (i4) hold one
    assert cold.two_hop_items.tolist() == [1, 0]  # i1: u2 (2) + u0 (1) = 3; i0: u0 (1) + u3 (1) = 2
    # a known user whose live history adds i3: u0's own row never counts as a co-user
    live = nbr.neighbourhood(0, np.array([0, 1, 2, 3]), **WIDE)
    assert live.co_users.tolist() == [1, 2, 3]
    assert live.co_user_weight.tolist() == [3.0, 2.0, 1.0]
    assert live.two_hop_items.tolist() == [4]
    assert live.two_hop_weight.tolist() == [3.0]
    nothing = nbr.neighbourhood(None, np.array([], dtype=np.int64), **WIDE)
    assert nothing.items.size == nothing.co_users.size == nothing.two_hop_items.size == 0


@pytest.mark.parametrize("seed", range(5))
def test_neighbourhood_matches_dense_reference(seed):
    rng = np.random.default_rng(seed)
    m = sp.random(30, 25, density=0.15, random_state=rng, format="csr")
    g = BipartiteGraph.from_matrix(m)
    x = (m.toarray() != 0).astype(int)
    for u in range(30):
        nb = g.neighbourhood(u, n_users=6, n_items=8, item_norm=0.0)
        shared = x[:, x[u] > 0].sum(1)
        shared[u] = 0
        users = sorted((v for v in range(30) if shared[v] > 0), key=lambda v: (-shared[v], v))[:6]
        assert nb.co_users.tolist() == users
        assert nb.co_user_weight.tolist() == [shared[v] for v in users]
        co = shared @ x
        co[x[u] > 0] = 0
        items = sorted((j for j in range(25) if co[j] > 0), key=lambda j: (-co[j], j))[:8]
        assert nb.two_hop_items.tolist() == items
        assert nb.two_hop_weight.tolist() == [co[j] for j in items]


# ---------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path, path):
    folder = path.save(tmp_path / "graph")
    assert sorted(p.name for p in folder.iterdir()) == ["shape.json", "ui.indices.npy", "ui.indptr.npy"]
    meta = json.loads((folder / "shape.json").read_text())
    assert (meta["n_users"], meta["n_items"], meta["n_edges"]) == (3, 4, 6)
    back = BipartiteGraph.load(folder)
    assert (back.ui != path.ui).nnz == 0
    nodes = np.array(PATH_ORDER)
    np.testing.assert_array_equal(back.hop_distances(nodes, 5), path.hop_distances(nodes, 5))
    assert back.neighbourhood(1, **WIDE) == path.neighbourhood(1, **WIDE)


def test_load_errors(tmp_path, path):
    with pytest.raises(FileNotFoundError, match="shape.json"):
        BipartiteGraph.load(tmp_path / "nothing")
    folder = path.save(tmp_path / "g")
    meta = json.loads((folder / "shape.json").read_text())
    (folder / "shape.json").write_text(json.dumps({**meta, "n_users": 5}))
    with pytest.raises(ValueError, match="does not match"):
        BipartiteGraph.load(folder)
    (folder / "shape.json").write_text(json.dumps({**meta, "n_items": 2}))
    with pytest.raises(ValueError, match="outside"):
        BipartiteGraph.load(folder)
    (folder / "shape.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format"):
        BipartiteGraph.load(folder)


# ---------------------------------------------------------------- real data
def test_amazon_office_against_scipy_bfs():
    """On a real prepared graph, prompt-like node sets match scipy's BFS from each source."""

    root = DATASETS / "amazon-office"
    if not root.exists():
        pytest.skip(f"real dataset not found at {root} (see shared/datasets/README.md)")
    from training.data.dataset import prepare
    from training.data.recbole import read_recbole

    train = prepare(read_recbole(root), "amazon-office").train
    g = BipartiteGraph.from_matrix(train)
    g.hops.warm()
    rng = np.random.default_rng(7)
    ui = (train != 0).astype(np.float64)
    sets = []
    for u in rng.integers(0, g.n_users, size=6).tolist():
        nb = g.neighbourhood(u, n_users=8, n_items=8, item_norm=0.0)
        sets.append(
            np.concatenate([[u], g.item_node(nb.items[:10]), nb.co_users, g.item_node(nb.two_hop_items)])
        )
    sets.append(rng.integers(0, g.n_nodes, size=25))  # random nodes: long and unreachable distances too
    for s, d in zip(sets, g.hop_distances_many(sets, 5), strict=True):
        np.testing.assert_array_equal(d, reference_distances(ui, s, 5))
    # live edges: a user's held-out valid items added, some train edges removed
    u = int(rng.integers(0, g.n_users))
    extra = (np.full(2, u), rng.integers(0, g.n_items, 2))
    removed = (np.full(2, u), g.user_items(u)[:2])
    mod = ui.tolil()
    mod[extra] = 1
    mod[removed] = 0
    for s in sets[:3]:
        np.testing.assert_array_equal(
            g.hop_distances(s, 5, extra, removed), reference_distances(mod.tocsr(), s, 5)
        )


def test_small_cache_evicts_and_stays_correct():
    """With room for only 3 co-occurrence rows the cache keeps evicting; answers must not change."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    m = sp.random(40, 30, density=0.1, random_state=rng, format="csr")
    ui = (m.toarray() != 0).astype(float)
    g = BipartiteGraph.from_matrix(m)
    g.hops.cooc_cache_bytes = 3 * 8 * g.hops.n_words
    sets = [rng.choice(70, size=15) for _ in range(24)]
    with ThreadPoolExecutor(4) as pool:  # the service queries one graph from several threads
        results = list(pool.map(lambda s: g.hop_distances(s, 5), sets))
    assert g.hops._cache().owner.size == 3
    for s, d in zip(sets, results, strict=True):
        np.testing.assert_array_equal(d, reference_distances(ui, s, 5))

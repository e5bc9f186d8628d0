"""service.explain on small random graphs, checked against counts taken from the raw interactions."""

from __future__ import annotations

import numpy as np
import pytest

import service.explain as explain_module
from graphprompt.graph import BipartiteGraph
from service.explain import MAX_REASONS, explain, graph_reasons, similar_text_reason


def random_graph(seed: int, n_users: int = 60, n_items: int = 40, p: float = 0.12):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < p
    edges = {(int(u), int(i)) for u, i in zip(*np.nonzero(dense), strict=True)}
    return BipartiteGraph.from_matrix(dense.astype(np.float32)), edges, rng


def expected_pairs(edges, history, item, user):
    """{history item: users other than ``user`` who chose both}, straight from the edge list."""
    users_of = {}
    for u, i in edges:
        users_of.setdefault(i, set()).add(u)
    both = {h: len((users_of.get(h, set()) & users_of.get(item, set())) - {user}) for h in history}
    return {h: n for h, n in both.items() if n}, len(users_of.get(item, set()))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("norm", [0.0, 0.5])
@pytest.mark.parametrize("block", [explain_module.BLOCK, 40, 1])  # one product; item and history blocks
def test_explain_strengths_match_the_prior_formula_from_raw_interactions(seed, norm, block, monkeypatch):
    monkeypatch.setattr(explain_module, "BLOCK", block)
    graph, edges, rng = random_graph(seed)
    user = int(rng.integers(graph.n_users))
    history = rng.permutation(graph.n_items)[:8]
    items = np.setdiff1d(rng.permutation(graph.n_items)[:15], history)
    co_users = rng.permutation(graph.n_users)[:5]
    out = graph_reasons(graph, items, history, co_users, user=user, item_norm=norm)
    assert len(out) == items.size
    for item, reasons in zip(items.tolist(), out, strict=True):
        assert len(reasons) <= MAX_REASONS
        pairs, degree = expected_pairs(edges, history.tolist(), item, user)
        chose = sum((int(v), item) in edges for v in co_users.tolist())
        co = [r for r in reasons if r["kind"] == "co_occurrence"]
        # the strongest history items, as many as the co-users reason leaves room for
        room = MAX_REASONS - (chose > 0)
        assert sorted(r["count"] for r in co) == sorted(pairs.values(), reverse=True)[:room][::-1]
        for r in co:
            assert r["count"] == pairs[r["item"]]
            assert r["strength"] == pytest.approx(r["count"] / max(degree, 1) ** norm, rel=1e-6)
        assert [r["count"] for r in co] == sorted((r["count"] for r in co), reverse=True)
        users = [r for r in reasons if r["kind"] == "co_users"]
        if chose:
            assert users == [{"kind": "co_users", "share": chose / 5, "count": chose, "co_users": 5}]
            assert reasons[-1] == users[0]
        else:
            assert users == []


def test_explain_strengths_add_up_to_the_neighbourhoods_two_hop_weight():
    """The per-history-item strengths of a prompt candidate sum to the weight that ranked it."""
    graph, _, rng = random_graph(11, n_users=80, n_items=30, p=0.2)
    user = 3
    nbr = graph.neighbourhood(user, n_users=10, n_items=20, item_norm=0.5)
    out = graph_reasons(graph, nbr.two_hop_items, nbr.items, nbr.co_users, user=user, item_norm=0.5, limit=99)
    for w, reasons in zip(nbr.two_hop_weight.tolist(), out, strict=True):
        assert sum(r["strength"] for r in reasons if r["kind"] == "co_occurrence") == pytest.approx(
            w, rel=1e-5
        )


def test_explain_names_only_history_items_and_skips_unknown_ones():
    graph, _, rng = random_graph(2)
    history = np.array([5, 1, 9, graph.n_items + 3])  # the last: a new catalogue item the graph lacks
    items = np.array([0, 2, graph.n_items, 4, 7])
    out = graph_reasons(graph, items, history, np.array([0, 1, 2]), user=None, item_norm=0.5)
    assert out[2] == []  # the new item has no graph reasons
    named = {r["item"] for reasons in out for r in reasons if "item" in r}
    assert named <= {5, 1, 9}


def test_explain_a_seen_item_is_no_reason_for_itself():
    graph, _, _ = random_graph(5, p=0.3)
    history = np.array([1, 2, 3])
    out = graph_reasons(graph, history, history, np.zeros(0, np.int64), user=None, item_norm=0.5)
    for item, reasons in zip(history.tolist(), out, strict=True):
        assert reasons and all(r["item"] != item for r in reasons)


def test_explain_nothing_to_say():
    graph, _, _ = random_graph(3)
    empty = np.zeros(0, np.int64)
    assert graph_reasons(graph, np.array([1, 2]), empty, empty, user=None, item_norm=0.5) == [[], []]
    assert graph_reasons(graph, empty, np.array([1]), empty, user=None, item_norm=0.5) == []


def test_explain_similar_text_reason_for_a_new_item():
    graph, _, _ = random_graph(4)
    new = graph.n_items + 1
    assert similar_text_reason(7, 0.8125) == {
        "kind": "similar_text", "item": 7, "similarity": 0.8125, "in_history": False,
    }  # fmt: skip
    out = explain(
        graph, np.array([new, 3]), np.array([7, 1]), np.zeros(0, np.int64), user=None, item_norm=0.5,
        similar={new: [(1, 0.9, True), (7, 0.8125, False)]},
    )  # fmt: skip
    assert out[0] == [
        {"kind": "similar_text", "item": 1, "similarity": 0.9, "in_history": True},
        {"kind": "similar_text", "item": 7, "similarity": 0.8125, "in_history": False},
    ]
    assert all(r["kind"] != "similar_text" for r in out[1])


def test_reason_cache_computes_once_per_key_counts_lookups_and_stays_bounded():
    from service.explain import ReasonCache

    cache, calls = ReasonCache(size=2), []

    def compute(tag):
        def f():
            calls.append(tag)
            return [[{"kind": "co_users", "count": len(calls)}]]

        return f

    first = cache.get("a", compute("a"))
    assert cache.get("a", compute("a")) is first and calls == ["a"]  # stored as computed, handed out as is
    cache.get("b", compute("b"))
    cache.get("a", compute("a"))  # a is now the most recent
    cache.get("c", compute("c"))  # evicts b, the least recently used
    assert len(cache) == 2 and calls == ["a", "b", "c"]
    cache.get("b", compute("b"))
    assert calls == ["a", "b", "c", "b"]
    assert (cache.hits, cache.misses) == (2, 4)
    assert ReasonCache(size=0).get("x", compute("x")) and len(ReasonCache(size=0)) == 0


@pytest.mark.parametrize("seed", range(4))
def test_explain_pair_counts_give_the_block_products_reasons(seed):
    """The version's PairCounts and the block product are two ways to the same reasons (the first is what a
    service uses; the second is for graphs too big for it)."""
    from service.explain import PairCounts

    graph, _, rng = random_graph(seed, n_users=80, n_items=50, p=0.15)
    pairs = PairCounts.build(graph)
    assert pairs is not None and PairCounts.build(graph, max_pairs=1) is None
    for _ in range(10):
        user = int(rng.integers(graph.n_users))
        history = np.concatenate([graph.user_items(user), rng.permutation(graph.n_items)[:3]])
        items = rng.permutation(graph.n_items)[:12]  # seen items too (exclude_seen off)
        co_users = rng.permutation(graph.n_users)[:6]
        for who in (user, None):
            args = (graph, items, history, co_users)
            slow = graph_reasons(*args, user=who, item_norm=0.5, limit=99)
            assert graph_reasons(*args, user=who, item_norm=0.5, limit=99, pairs=pairs) == slow
            assert graph_reasons(*args, user=who, item_norm=0.5, pairs=pairs) == graph_reasons(
                *args, user=who, item_norm=0.5
            )

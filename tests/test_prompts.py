"""Prompt builder on a hand-made graph: token layout, node ids, bias values, padding, labels, config."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import scipy.sparse as sp

from graphprompt.bias import BiasConfig
from graphprompt.graph import BipartiteGraph
from graphprompt.prompts import IGNORE, PromptBuilder, PromptConfig
from graphprompt.tokenizer import RecTokenizer

C = 6 / 11
# 3 users x 4 items:  u0: i0 i1   u1: i1 i2   u2: i3
TRAIN = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
# exact relation values R = c * (A + max(0, 6 - d) / 6)
SAME, EDGE, HOP2, HOP3 = C, C * (1 + 5 / 6), C * 4 / 6, C * 3 / 6


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    texts = ["has interacted with will interact with users items shared chose title brand"] * 5
    tok = RecTokenizer.train(texts, n_users=3, n_items=4, vocab_size=300, min_frequency=1)
    return PromptBuilder(tok, BipartiteGraph.from_matrix(TRAIN), PromptConfig(max_history=10))


def _pos(p, node: int) -> int:
    return int(np.flatnonzero(p.node_ids == node)[0])


def test_predictive_layout_and_node_ids(builder: PromptBuilder) -> None:
    tok = builder.tok
    p = builder.predictive(0, np.array([1, 0]))
    ids = p.input_ids
    assert ids.dtype == np.int64 and p.node_ids.dtype == np.int64 and p.bias.dtype == np.float32
    assert ids[0] == tok.user_token(0)
    assert tok.decode(ids) == "user_0 has interacted with item_1 item_0. user_0 will interact with"
    # node ids: user 0 -> 0, item j -> 3 + j, words -> -1
    nodes = p.node_ids[p.node_ids >= 0].tolist()
    assert nodes == [0, 3 + 1, 3 + 0, 0]
    assert np.all(p.node_ids[ids < tok.n_words] == -1)
    assert p.n_prompt == len(p)  # no main part


def test_bias_values_on_hand_made_graph(builder: PromptBuilder) -> None:
    p = builder.predictive(0, np.array([0, 1]))
    u, i0, i1 = _pos(p, 0), _pos(p, 3), _pos(p, 4)
    b = p.bias
    assert b[u, u] == pytest.approx(SAME)
    assert b[u, i0] == pytest.approx(EDGE) and b[i1, u] == pytest.approx(EDGE)
    assert b[i0, i1] == pytest.approx(HOP2)  # i0 - u0 - i1
    words = np.flatnonzero(p.node_ids < 0)
    assert np.all(b[words] == 0) and np.all(b[:, words] == 0)
    # the repeated user token at the end shares the same relations
    last_u = np.flatnonzero(p.node_ids == 0)[-1]
    assert b[last_u, i0] == pytest.approx(EDGE) and b[last_u, u] == pytest.approx(SAME)


def test_neighbourhood_prompt_has_varied_distances(builder: PromptBuilder) -> None:
    g = builder.graph
    nb = g.neighbourhood(0, n_users=5, n_items=5, item_norm=0.0)
    assert nb.co_users.tolist() == [1] and nb.two_hop_items.tolist() == [2]
    p = builder.predictive(0, g.user_items(0), nb)
    text = builder.tok.decode(p.input_ids)
    assert "Users with shared items: user_1" in text and "Items they also chose: item_2" in text
    u0, u1, i0, i2 = _pos(p, 0), _pos(p, 1), _pos(p, 3), _pos(p, 5)
    assert p.bias[u0, u1] == pytest.approx(HOP2)  # u0 - i1 - u1
    assert p.bias[u0, i2] == pytest.approx(HOP3)  # u0 - i1 - u1 - i2
    assert p.bias[u1, i2] == pytest.approx(EDGE)
    assert p.bias[i0, i2] == pytest.approx(C * 2 / 6)  # i0 - u0 - i1 - u1 - i2: 4 hops


def test_builder_neighbourhood_follows_the_prompt_config(builder: PromptBuilder) -> None:
    g = builder.graph
    cfg = PromptConfig(max_history=10, n_co_users=1, n_two_hop_items=1, two_hop_norm=0.5)
    b = PromptBuilder(builder.tok, g, cfg)
    nb = b.neighbourhood(0)
    want = g.neighbourhood(0, n_users=1, n_items=1, item_norm=0.5)
    assert nb.co_users.tolist() == want.co_users.tolist()
    assert nb.two_hop_items.tolist() == want.two_hop_items.tolist()
    none = PromptConfig(n_co_users=0, n_two_hop_items=0)
    assert PromptBuilder(builder.tok, g, none).neighbourhood(0) is None
    assert PromptConfig.from_dict(cfg.to_dict()).two_hop_norm == 0.5
    old = cfg.to_dict()
    del old["two_hop_norm"]  # a prompt_config.json from before the option: raw counts, as it was trained
    assert PromptConfig.from_saved(old).two_hop_norm == 0.0
    # a partial override (TrainConfig.prompt) takes today's defaults: the legacy values are for saved files
    # only (they once leaked into every training run, which then ranked two-hop items by raw counts)
    assert PromptConfig.from_dict({"n_two_hop_items": 5}).two_hop_norm == PromptConfig().two_hop_norm == 0.5


def test_the_two_hop_settings_have_one_default() -> None:
    """PromptConfig's defaults are the only ones: the graph query takes the settings explicitly, and a saved
    file lacking a field gets the value it was trained with, not a second default."""
    params = inspect.signature(BipartiteGraph.neighbourhood).parameters
    assert all(params[p].default is inspect.Parameter.empty for p in ("n_users", "n_items", "item_norm"))
    today = PromptConfig()
    assert PromptConfig.from_saved(today.to_dict()) == today  # a complete saved file: exactly as written
    assert PromptConfig.from_saved({}) == PromptConfig(
        two_hop_norm=0.0, candidate_strength=0.0, strength_without_bias=False
    )


def test_removed_edges_change_the_bias(builder: PromptBuilder) -> None:
    full = builder.predictive(0, np.array([0, 1]))
    cut = builder.predictive(0, np.array([0, 1]), removed_edges=(np.array([0]), np.array([1])))
    u, i1 = _pos(cut, 0), _pos(cut, 4)
    assert full.bias[u, i1] == pytest.approx(EDGE)
    # without the edge u0-i1 the path is u0 - ? : u0 only has i0 left, i0 has no other user: unreachable
    assert cut.bias[u, i1] == pytest.approx(0.0)


def test_disabled_and_ones_modes(builder: PromptBuilder) -> None:
    base = builder.cfg
    for cfg, check in [
        (BiasConfig(enabled=False), lambda b, n: np.all(b == 0)),
        (BiasConfig(mode="ones"), lambda b, n: np.all(b[np.ix_(n, n)] == 1.0)),
    ]:
        pb = PromptBuilder(builder.tok, builder.graph, PromptConfig(bias=cfg, max_history=base.max_history))
        p = pb.predictive(0, np.array([0, 1]))
        assert check(p.bias, np.flatnonzero(p.node_ids >= 0))


def test_cold_start_prompt_has_no_user_token(builder: PromptBuilder) -> None:
    p = builder.predictive(None, np.array([2, 3]))
    assert not np.any((p.node_ids >= 0) & (p.node_ids < 3))
    assert builder.tok.decode(p.input_ids).startswith("A user has interacted with item_2 item_3")


def test_history_is_capped_to_the_most_recent(builder: PromptBuilder) -> None:
    pb = PromptBuilder(builder.tok, builder.graph, PromptConfig(max_history=2))
    p = pb.predictive(0, np.array([0, 1, 2, 3]))
    items = p.node_ids[p.node_ids >= 3] - 3
    assert items.tolist() == [2, 3]


def test_cached_distances_match_fresh_ones(builder: PromptBuilder) -> None:
    g = builder.graph
    nb = g.neighbourhood(0, n_users=5, n_items=5, item_norm=0.0)
    p = builder.predictive(0, np.array([1, 0]), nb)
    cached = builder.distances(p.node_ids)
    q = builder.predictive(0, np.array([0, 1]), nb, distances=cached)
    fresh = builder.predictive(0, np.array([0, 1]), nb)
    assert np.array_equal(q.bias, fresh.bias)
    with pytest.raises(ValueError, match="do not cover"):
        builder.predictive(0, np.array([0, 1, 3]), distances=cached)


def test_collate_left_pads(builder: PromptBuilder) -> None:
    a = builder.predictive(0, np.array([0, 1]))
    b = builder.predictive(2, np.array([3]))
    ids, mask, bias = PromptBuilder.collate([a, b])
    n = max(len(a), len(b))
    assert ids.shape == (2, n) and mask.dtype == np.int64 and bias.shape == (2, n, n)
    short = 1 if len(b) < len(a) else 0
    pad = n - min(len(a), len(b))
    assert np.all(mask[short, :pad] == 0) and np.all(mask[short, pad:] == 1)
    assert (
        np.all(ids[short, :pad] == 0) and np.all(bias[short, :pad] == 0) and np.all(bias[short, :, :pad] == 0)
    )
    # the last column is every prompt's last token
    assert ids[0, -1] == a.input_ids[-1] and ids[1, -1] == b.input_ids[-1]
    assert np.array_equal(bias[short, pad:, pad:], [a, b][short].bias)


def test_lm_prompts_and_labels(builder: PromptBuilder) -> None:
    tok = builder.tok
    collab = builder.collaborative(0, np.array([1, 0]))
    assert collab.head == "item"
    assert tok.decode(collab.input_ids) == "user_0 has interacted with item_1 item_0"
    content = builder.content(2, "title", "Heavy  Duty\nStapler")
    assert content.head == "word"
    assert tok.decode(content.input_ids) == "The title of item_2 is: Heavy Duty Stapler"
    group = builder.group(np.array([0, 1]), "brand", "Avery")
    assert tok.decode(group.input_ids) == "These items item_0 item_1 have the same brand: Avery"
    nbr = builder.neighbour(0, np.array([1]))
    assert nbr.head == "user" and tok.decode(nbr.input_ids) == "user_0 shares items with user_1"

    offsets = {"word": 0, "user": tok.user_offset, "item": tok.item_offset}
    labels = PromptBuilder.labels([collab, content], offsets)
    ids, _, _ = PromptBuilder.collate([collab, content])
    n = ids.shape[1]
    # row 0 (collaborative): the position before each main token predicts that item's local index
    start = n - len(collab)
    lab = labels[0]
    assert lab[start + collab.n_prompt - 1] == 1 and lab[start + collab.n_prompt] == 0
    assert np.sum(lab != IGNORE) == 2 and lab[-1] == IGNORE
    # row 1 (content): word labels are word ids
    assert np.sum(labels[1] != IGNORE) == len(content) - content.n_prompt
    assert np.all(labels[1][labels[1] != IGNORE] < tok.n_words)


def test_bad_input_is_rejected(builder: PromptBuilder) -> None:
    with pytest.raises(ValueError, match="item index out of range"):
        builder.predictive(0, np.array([4]))
    with pytest.raises(ValueError, match="user index out of range"):
        builder.predictive(3, np.array([0]))
    with pytest.raises(ValueError, match="group prompt needs"):
        builder.group(np.array([0]), "brand", "x")
    with pytest.raises(ValueError, match="tokenizer has"):
        PromptBuilder(builder.tok, BipartiteGraph.from_matrix(sp.csr_matrix((2, 4))))


def test_config_round_trip(tmp_path) -> None:
    cfg = PromptConfig(max_history=7, bias=BiasConfig(max_hops=3, mode="ones"), tokenizer={"n_words": 5})
    cfg.save(tmp_path / "p.json")
    back = PromptConfig.load(tmp_path / "p.json")
    assert back == cfg and json.loads((tmp_path / "p.json").read_text())["bias"]["max_hops"] == 3
    with pytest.raises(ValueError, match="unknown prompt config"):
        PromptConfig.from_dict({"max_histroy": 3})


def test_candidate_strength_fills_the_last_bias_row(builder: PromptBuilder) -> None:
    """The predicting position's bias row holds strength * w / max(w) at the two-hop items, nothing else
    changes, and the row is absent when switched off or in the all-ones ablation. Without the graph bias the
    row alone remains (the prior reads it; the model keeps it out of attention), except in prompt configs
    saved before that, whose no-bias models saw all zeros."""
    g = builder.graph
    cfg = PromptConfig(max_history=10, n_co_users=2, n_two_hop_items=3, candidate_strength=2.0)
    pb = PromptBuilder(builder.tok, g, cfg)
    nb = pb.neighbourhood(0)
    assert len(nb.two_hop_items) >= 1
    p = pb.predictive(0, g.user_items(0), nb)
    no_row = PromptConfig(max_history=10, n_co_users=2, n_two_hop_items=3, candidate_strength=0.0)
    plain = PromptBuilder(builder.tok, g, no_row)
    q = plain.predictive(0, g.user_items(0), nb)
    assert np.array_equal(p.input_ids, q.input_ids)
    diff = p.bias - q.bias
    assert np.all(diff[:-1] == 0)  # only the last row carries the strengths
    w = nb.two_hop_weight / nb.two_hop_weight.max()
    for item, want in zip(nb.two_hop_items, w, strict=True):
        assert diff[-1, _pos(p, 3 + int(item))] == pytest.approx(2.0 * want)
    assert np.count_nonzero(diff[-1]) == len(nb.two_hop_items)
    # the service re-attaches the bias from cached distances: same matrix
    probe = pb.predictive(0, g.user_items(0), nb, with_bias=False)
    again = pb.with_bias(probe, distances=pb.distances(probe.node_ids))
    assert np.allclose(again.bias, p.bias)
    ones = PromptBuilder(builder.tok, g, PromptConfig(**{**cfg.to_dict(), "bias": BiasConfig(mode="ones")}))
    assert set(np.unique(ones.predictive(0, g.user_items(0), nb).bias)) <= {0.0, 1.0}
    no_bias = {**cfg.to_dict(), "bias": BiasConfig(enabled=False).to_dict()}
    off = PromptBuilder(builder.tok, g, PromptConfig.from_dict(no_bias))
    row_only = off.predictive(0, g.user_items(0), nb).bias
    assert np.all(row_only[:-1] == 0) and np.allclose(row_only[-1], diff[-1])
    saved = {k: v for k, v in no_bias.items() if k != "strength_without_bias"}
    before = PromptBuilder(builder.tok, g, PromptConfig.from_saved(saved))
    assert np.all(before.predictive(0, g.user_items(0), nb).bias == 0)
    old = cfg.to_dict()
    del old["candidate_strength"]  # a prompt_config.json from before the option: no strength row
    assert PromptConfig.from_saved(old).candidate_strength == 0.0

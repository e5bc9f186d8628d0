"""GraphGPT mechanics on a tiny random model: shapes, bias, causality, padding, heads, losses, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from inference.torch_model import MASK_MIN, GraphGPT, ModelConfig, svd_factors

V, U, N_ITEMS = 40, 6, 9


def _model(**kw) -> GraphGPT:
    torch.manual_seed(0)
    kw = {"n_layer": 2, "n_embd": 32, "n_head": 4, "dropout": 0.0, **kw}
    cfg = ModelConfig(n_words=V, n_users=U, n_items=N_ITEMS, **kw)
    return GraphGPT(cfg).eval()


def _batch(b: int = 3, length: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V + U + N_ITEMS, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    ids[0, :3] = 0
    bias = torch.rand(b, length, length, generator=g)
    bias = (bias + bias.transpose(1, 2)) / 2
    bias[0, :3] = 0
    bias[0, :, :3] = 0
    return ids, mask, bias


def test_shapes_and_user_vector() -> None:
    m = _model()
    ids, mask, bias = _batch()
    h = m.hidden(ids, mask, bias)
    assert h.shape == (3, 8, 32)
    vec = m.user_vector(ids, mask, bias)
    assert vec.shape == (3, 32) and torch.allclose(vec, h[:, -1], atol=1e-6)
    assert m.item_scores(vec).shape == (3, N_ITEMS)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"n_layer": 1},
        {"n_layer": 3, "learn_bias_scale": True, "bias_scale": 0.7},
        {"candidate_prior": True},
    ],
)
def test_last_position_pass_equals_the_full_pass(kw) -> None:
    """user_vector/encode run the last block at the last position only; that must not change the answer,
    with left padding, any depth, a learned bias scale, and in training mode (gradients) too."""
    m = _model(**kw)
    ids, mask, bias = _batch(b=4, length=11, seed=3)
    full = m.hidden(ids, mask, bias)[:, -1]
    last = m.last_hidden(ids, mask, bias)
    assert torch.allclose(full, last, atol=1e-5), (full - last).abs().max()
    if m.cfg.candidate_prior:
        m.set_prior(1.5)
    vec, cand = m.encode(ids, mask, bias)
    assert torch.allclose(vec, full, atol=1e-5)
    if cand is not None:
        assert torch.allclose(cand, m.candidate_scores(full, ids, mask, bias), atol=1e-5)
    # the fine-tuning loss runs the same last-position pass
    targets = torch.zeros(4, N_ITEMS)
    targets[:, [0, 3]] = 1.0
    ref = -(torch.log_softmax(m.item_scores(full), -1) * targets).sum(-1).mean()
    assert torch.allclose(m(ids, mask, bias, targets=targets)["rec"], ref, atol=1e-5)
    m.train()  # dropout 0: the same function, and gradients reach the body's first layer
    m.zero_grad()
    (m.last_hidden(ids, mask, bias) * torch.randn(4, 32)).sum().backward()  # a plain sum of ln_f is flat
    assert m.body.h[0].mlp.c_fc.weight.grad.abs().sum() > 0


def test_embedding_uses_three_tables() -> None:
    m = _model()
    ids = torch.tensor([[0, V - 1, V, V + U - 1, V + U, V + U + N_ITEMS - 1]])
    e = m.embed(ids)
    assert torch.equal(e[0, 1], m.word_emb.weight[V - 1])
    assert torch.equal(e[0, 2], m.user_emb.weight[0]) and torch.equal(e[0, 3], m.user_emb.weight[U - 1])
    assert torch.equal(e[0, 4], m.item_emb.weight[0]) and torch.equal(e[0, 5], m.item_emb.weight[N_ITEMS - 1])
    ec = m.embed(ids, content=True)
    assert torch.equal(ec[0, 4], m.content_item_emb.weight[0]) and torch.equal(ec[0, 1], e[0, 1])


def test_graph_bias_changes_attention_output() -> None:
    m = _model()
    ids, mask, bias = _batch()
    with torch.no_grad():
        a = m.hidden(ids, mask, torch.zeros_like(bias))
        b = m.hidden(ids, mask, bias)
    assert (a - b).abs().max() > 1e-3
    # a zero scale switches it off
    off = _model(bias_scale=0.0)
    with torch.no_grad():
        assert torch.allclose(off.hidden(ids, mask, bias), off.hidden(ids, mask, torch.zeros_like(bias)))


def test_bias_equals_an_additive_logit_term() -> None:
    """With one layer, the graph bias must act exactly like adding it to the 4D mask in eager attention."""
    torch.manual_seed(0)
    m = GraphGPT(
        ModelConfig(n_words=V, n_users=U, n_items=N_ITEMS, n_layer=1, n_embd=16, n_head=2, dropout=0.0)
    ).eval()
    ids, mask, bias = _batch()
    with torch.no_grad():
        ours = m.hidden(ids, mask, bias)
        m.body.config._attn_implementation = "eager"
        ref = m.body(
            inputs_embeds=m.embed(ids),
            attention_mask=m.base_mask(mask) + bias.unsqueeze(1),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        ).last_hidden_state
    assert torch.allclose(ours, ref, atol=1e-5)


def test_causal_future_tokens_do_not_change_the_past() -> None:
    m = _model()
    ids, mask, bias = _batch()
    ids2, bias2 = ids.clone(), bias.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % (V + U + N_ITEMS)
    bias2[:, -1, :] = 5.0  # the last position's relations change too
    bias2[:, :, -1] = 5.0
    with torch.no_grad():
        h1, h2 = m.hidden(ids, mask, bias), m.hidden(ids2, mask, bias2)
    assert torch.allclose(h1[:, :-1], h2[:, :-1], atol=1e-6)
    assert (h1[:, -1] - h2[:, -1]).abs().max() > 1e-4


def test_left_padding_does_not_change_outputs() -> None:
    m = _model()
    ids, mask, bias = _batch()
    with torch.no_grad():
        padded = m.hidden(ids, mask, bias)[0, 3:]
        alone = m.hidden(ids[:1, 3:], mask[:1, 3:], bias[:1, 3:, 3:])[0]
    assert torch.allclose(padded, alone, atol=1e-5)


def test_base_mask_values() -> None:
    mask = torch.tensor([[0, 1, 1]])
    bm = GraphGPT.base_mask(mask)[0, 0]
    assert bm.shape == (3, 3)
    assert bm[1, 1] == 0 and bm[2, 1] == 0 and bm[2, 2] == 0
    assert bm[1, 2] == MASK_MIN and bm[1, 0] == MASK_MIN and bm[2, 0] == MASK_MIN
    assert bm[0, 0] == 0  # a padding row still sees itself: never a fully masked (NaN) row
    assert np.isfinite(MASK_MIN) and torch.isfinite(torch.tensor(MASK_MIN, dtype=torch.bfloat16))


def test_losses_and_heads() -> None:
    m = _model()
    ids, mask, bias = _batch()
    targets = torch.zeros(3, N_ITEMS)
    targets[:, 2] = 1
    out = m(ids, mask, bias, targets=targets)
    logp = torch.log_softmax(m.item_scores(m.user_vector(ids, mask, bias)), -1)
    assert torch.allclose(out["rec"], -logp[:, 2].mean(), atol=1e-5)
    labels = torch.full((3, 8), -100)
    labels[:, 4] = 1
    lm = m(ids, mask, bias, labels=labels, head="user")
    assert lm["lm"] > 0 and lm["loss"] == lm["lm"]
    with pytest.raises(ValueError, match="unknown head"):
        m(ids, mask, bias, labels=labels, head="words")


def test_mutual_regulariser_stops_gradient_on_the_other_tables() -> None:
    m = _model()
    with torch.no_grad():
        m.content_item_emb.weight.add_(0.1)
    ids = torch.tensor([[V + U + 1, V + U + 2, 3]])
    mask = torch.ones_like(ids)
    out = m(ids, mask, torch.zeros(1, 3, 3), reg_lambda=1.0)
    assert out["reg"] > 0
    out["reg"].backward()
    assert m.item_emb.weight.grad[1].abs().sum() > 0
    assert m.content_item_emb.weight.grad is None or m.content_item_emb.weight.grad.abs().sum() == 0


def test_learned_per_layer_scale_gets_gradients() -> None:
    m = _model(learn_bias_scale=True)
    m.train()
    ids, mask, bias = _batch()
    m(ids, mask, bias, targets=torch.ones(3, N_ITEMS) / N_ITEMS)["loss"].backward()
    assert m.bias_scale.requires_grad and m.bias_scale.grad.shape == (2,)
    assert (m.bias_scale.grad.abs() > 0).all()
    assert not _model().bias_scale.requires_grad


def test_save_load_round_trip(tmp_path) -> None:
    m = _model(learn_bias_scale=True)
    m.save(tmp_path)
    back = GraphGPT.load(tmp_path)
    assert back.cfg == m.cfg
    ids, mask, bias = _batch()
    with torch.no_grad():
        assert torch.equal(back.user_vector(ids, mask, bias), m.user_vector(ids, mask, bias))


def test_model_config_written_before_the_pruning_still_loads(tmp_path) -> None:
    """Served versions saved ``bias_layers`` (None) and ``extra`` ({}); they must keep loading, unchanged."""
    m = _model()
    m.save(tmp_path)
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "bias_layers": None, "extra": {}}))
    back = GraphGPT.load(tmp_path)
    assert back.cfg == m.cfg
    ids, mask, bias = _batch()
    with torch.no_grad():
        assert torch.equal(back.user_vector(ids, mask, bias), m.user_vector(ids, mask, bias))
    # a model that restricted the bias to some layers would now compute something else: refused, not changed
    with pytest.raises(ValueError, match="bias_layers"):
        ModelConfig.from_dict({**m.cfg.to_dict(), "bias_layers": [1]})
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({**m.cfg.to_dict(), "bias_layer": None})


def test_svd_init_is_deterministic_and_scaled() -> None:
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((30, 20)) < 0.2).astype(np.float32))
    u1, i1 = svd_factors(train, 8, seed=1)
    u2, i2 = svd_factors(train, 8, seed=1)
    assert np.array_equal(u1, u2) and np.array_equal(i1, i2)
    assert u1.shape == (30, 8) and i1.shape == (20, 8)
    assert abs(u1.std() - 0.02) < 1e-4 and abs(i1.std() - 0.02) < 1e-4
    m = GraphGPT(ModelConfig(n_words=V, n_users=30, n_items=20, n_embd=8, n_head=2, n_layer=1))
    m.init_ids_from_svd(train, seed=1)
    assert np.allclose(m.item_emb.weight.detach().numpy(), i1)
    # users who share items get similar vectors: the factors reproduce the normalised matrix's structure
    assert np.allclose(m.content_item_emb.weight.detach().numpy(), i1)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        GraphGPT(ModelConfig(n_words=5, n_users=1, n_items=1, n_embd=30, n_head=4))
    with pytest.raises(ValueError, match="unknown model config"):
        ModelConfig.from_dict({"n_words": 5, "n_users": 1, "n_items": 1, "n_embed": 3})
    with pytest.raises(ValueError, match="unknown model size"):
        ModelConfig.preset("huge", n_words=5, n_users=1, n_items=1)
    assert ModelConfig.preset("gpt2", n_words=5, n_users=1, n_items=1).n_layer == 12


def test_candidate_prior_adds_strength_times_score_spread() -> None:
    """prior = beta * std_items(h · E) * s_p at the item positions with a strength s_p (the last bias row),
    zero at words and padding, added to the score of the item each position names."""
    m = _model(candidate_prior=True)
    ids, mask, bias = _batch()
    is_item = (ids >= V + U) & (mask > 0)
    strength = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) + 0.1
    bias[:, -1] = strength  # words and padding get a strength too: the prior must still ignore them
    vec, cand = m.encode(ids, mask, bias)
    assert (cand == 0).all()  # weight 0 until set_prior: fine-tuning never sees the prior
    m.set_prior(1.5)
    vec, cand = m.encode(ids, mask, bias)
    spread = (vec @ m.item_emb.weight.T).double().std(dim=1, unbiased=False)
    assert torch.allclose(m.score_spread(vec).double(), spread, rtol=1e-4)
    want = torch.where(is_item, 1.5 * spread[:, None] * strength.double(), torch.zeros(()).double())
    assert torch.allclose(cand.double(), want, rtol=1e-4, atol=1e-6) and (cand[is_item] > 0).all()
    scores, expected = m.item_scores(vec, cand, ids), m.item_scores(vec)
    for r in range(len(ids)):
        for p in torch.nonzero(is_item[r]).flatten():
            expected[r, ids[r, p] - V - U] += cand[r, p]
    assert torch.allclose(scores, expected, atol=1e-5)
    with pytest.raises(ValueError, match=">= 0"):
        m.set_prior(-1.0)
    with pytest.raises(ValueError, match="no candidate prior"):
        _model().set_prior(1.0)
    assert _model().encode(ids, mask, bias)[1] is None


def test_a_model_without_graph_attention_reads_the_bias_only_for_its_prior() -> None:
    """attend_graph_bias=False (a run with the graph bias off): the bias input changes nothing in attention,
    bit for bit what an all-zero bias gives, and its last row still drives the candidate prior."""
    m = _model(candidate_prior=True, attend_graph_bias=False)
    ids, mask, bias = _batch()
    with torch.no_grad():
        assert torch.equal(m.last_hidden(ids, mask, bias), m.last_hidden(ids, mask, torch.zeros_like(bias)))
        assert torch.equal(m.hidden(ids, mask, bias), m.hidden(ids, mask, torch.zeros_like(bias)))
        m.set_prior(1.0)
        _, with_row = m.encode(ids, mask, bias)
        _, without = m.encode(ids, mask, torch.zeros_like(bias))
    is_item = (ids >= V + U) & (mask > 0)
    assert (with_row[is_item] > 0).all() and (without == 0).all()
    # a config saved before the field attends to the bias, as those models were trained
    old = {k: v for k, v in m.cfg.to_dict().items() if k != "attend_graph_bias"}
    assert ModelConfig.from_dict(old).attend_graph_bias is True

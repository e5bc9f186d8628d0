"""Export parity on a trained model: the served artifact must give exactly the trained model's answers.

One tiny GraphGPT (1 layer, 32-d) is trained for a few fine-tuning epochs on a real slice of amazon-office
(the first 600 users of ../shared/datasets, 3-core), exported once with the INT8 encoder, then checked:
ONNX vs torch user vectors (1e-4) on real prompts with graph bias, FAISS top-k vs the model's full
scoring, offline evaluation of the version vs the run's own test metrics (1e-3), the version layout, and
the CLI (publish, promote, clear errors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shared_data import office_users

SLICE_USERS = 600


def _office_slice(out: Path):
    """The first SLICE_USERS users (by raw id) of amazon-office, their interactions and item text, 3-core."""
    from training.data.dataset import prepare

    ds = prepare(office_users(SLICE_USERS), "office-slice", k_core=3)
    ds.save(out)
    return ds


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, run dir, version dir, run test metrics) of a tiny model trained and exported once."""
    import torch

    from training.export.exporter import export_run
    from training.recipe.train import TrainConfig, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    ds = _office_slice(root / "data")
    cfg = TrainConfig(
        dataset=str(root / "data"),
        run_dir=str(root / "run"),
        n_layer=1,
        n_embd=32,
        n_head=2,
        word_vocab=500,
        pretrain_rounds=0,
        content_warmup=0,
        epochs=3,
        patience=3,
        # a neighbourhood in the prompt, so the graph bias holds more than the token-type pattern, and the
        # candidate prior, so the encoder has its second output
        prompt={"max_history": 30, "n_co_users": 5, "n_two_hop_items": 5, "candidate_strength": 1.0},
        candidate_prior=True,
        prior_grid=(1.0,),  # one weight, so the exported encoder surely carries a non-zero prior
        item_item_grid=(0.5,),  # and the ranker surely adds a non-zero item-item term
        item_item_keeps=(100,),
    )
    metrics = train(cfg, quiet=True)
    assert metrics["prior"]["beta"] == 1.0 and set(metrics["ablations"]["transformer_only"]["test"]) >= {
        "recall@20"
    }
    assert metrics["item_item"]["weight"] == 0.5 and metrics["item_item"]["lam"] in cfg.item_item_lams
    # the blend grid's fast path (stored vectors + boosts) scores validation as training's scoring does
    (point,) = metrics["blend_grid"]
    assert (point["beta"], point["weight"]) == (1.0, 0.5)
    for k in ("recall@20", "recall@40", "ndcg@100"):
        assert abs(point[k] - metrics["valid"][k]) <= 1e-3, (k, point[k], metrics["valid"][k])
    assert metrics is not None
    version = export_run(root / "run", root / "version", int8=True)
    return ds, root / "run", version, metrics


def _eval_prompts(run: Path, users: np.ndarray):
    """The prompts training scores users with (all train items, run seed's order, full train graph)."""
    from training.recipe.finetune import PredictiveData
    from training.recipe.train import load_run

    model, builder = load_run(run)
    seed = json.loads((run / "train_config.json").read_text())["seed"]
    pdata = PredictiveData(builder, builder.graph, seed, target_variants=1)
    return model.eval(), [pdata.eval_prompt(int(u)) for u in users]


def _left_pad(batch, length: int):
    """Pad a collated batch on the left to ``length`` (the padding convention of PromptBuilder.collate)."""
    ids, mask, bias = batch
    extra = length - ids.shape[1]
    ids = np.pad(ids, ((0, 0), (extra, 0)))
    mask = np.pad(mask, ((0, 0), (extra, 0)))
    bias = np.pad(bias, ((0, 0), (extra, 0), (extra, 0)))
    return ids, mask, bias


def test_version_layout(trained) -> None:
    import onnx

    from graphprompt.graph import BipartiteGraph

    ds, _, version, _ = trained
    from inference.version import VERSION_FILES

    for name in (*VERSION_FILES, "encoder.int8.onnx"):
        if name in ("graph", "item_item"):
            assert (version / name).is_dir(), name  # folders; the graph is checked below
            continue
        assert (version / name).is_file(), name
    cfg = json.loads((version / "model_config.json").read_text())
    emb = np.load(version / "item_embeddings.npy")
    assert emb.shape == (ds.n_items, cfg["n_embd"]) and emb.dtype == np.float32
    assert json.loads((version / "index.json").read_text())["count"] == ds.n_items
    assert json.loads((version / "user_ids.json").read_text()) == ds.user_ids
    assert json.loads((version / "item_ids.json").read_text()) == ds.item_ids
    pop = np.load(version / "popularity.npy")
    assert pop.dtype == np.float32 and pop.sum() == ds.train.nnz
    np.testing.assert_array_equal(pop, np.asarray(ds.train.sum(axis=0)).ravel())
    items = json.loads((version / "items.json").read_text())
    assert [r["id"] for r in items] == ds.item_ids
    assert all(r.get("title", "") == t for r, t in zip(items, ds.item_text["title"], strict=True))
    graph = BipartiteGraph.load(version / "graph")
    assert (graph.ui != ds.train).nnz == 0
    assert not cfg["content_tables"]  # serving never needs the content-only id tables

    model = onnx.load(str(version / "encoder.onnx"))
    ins = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(ins) == ["input_ids", "attention_mask", "graph_bias"]
    assert [ins[n].elem_type for n in ins] == [onnx.TensorProto.INT64] * 2 + [onnx.TensorProto.FLOAT]
    assert all(d.dim_param and not d.dim_value for t in ins.values() for d in t.shape.dim)  # dynamic B, L
    out = model.graph.output[0]
    assert out.name == "user_vector" and out.type.tensor_type.shape.dim[1].dim_value == cfg["n_embd"]
    assert [o.name for o in model.graph.output[1:]] == ["candidate_scores"] and cfg["candidate_prior"]


def test_onnx_matches_torch_on_real_prompts(trained) -> None:
    """fp32 ONNX user vectors equal the trained torch model's within 1e-4 (B in {1, 3, 16}, many lengths)."""
    import torch

    from graphprompt.prompts import PromptBuilder
    from inference.encoders import OnnxEncoder
    from inference.torch_encoder import TorchEncoder

    ds, run, version, _ = trained
    users = np.random.default_rng(0).choice(ds.n_users, size=40, replace=False)
    model, prompts = _eval_prompts(run, users)
    prompts.sort(key=len)
    # real graph bias: node pairs at several hop distances, not only the user-item / item-item pattern
    assert max(len(np.unique(p.bias)) for p in prompts) >= 4
    onnx_enc = OnnxEncoder(version / "encoder.onnx", providers=["CPUExecutionProvider"])
    torch_enc = TorchEncoder(version)
    groups = [
        prompts[:1],
        prompts[-1:],
        prompts[:3],
        prompts[18:21],
        prompts[-3:],
        prompts[:16],
        prompts[-16:],
    ]
    batches = [PromptBuilder.collate(g) for g in groups]
    batches += [_left_pad(batches[2], 128), _left_pad(batches[5], 96)]  # long padded batches too
    seen = set()
    assert onnx_enc.has_candidates and torch_enc.has_candidates
    for batch in batches:
        with torch.no_grad():
            ref, ref_cand = (t.numpy() for t in model.encode(*(torch.from_numpy(a) for a in batch)))
        got, got_cand = onnx_enc.encode_full(*batch)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-4, batch[0].shape
        assert got_cand.shape == batch[0].shape and np.abs(got_cand - ref_cand).max() <= 1e-4
        assert (ref_cand > 0).any()  # the prior is on: real prompts have candidates with a strength
        vec, cand = torch_enc.encode_full(*batch)  # the torch fallback is the same model
        assert np.abs(vec - ref).max() <= 1e-5 and np.abs(cand - ref_cand).max() <= 1e-5
        seen.add(batch[0].shape)
    assert {b for b, _ in seen} == {1, 3, 16} and len({n for _, n in seen}) >= 5
    # padding changes nothing: a prompt alone and inside a padded batch give the same vector
    alone = onnx_enc.encode(*PromptBuilder.collate(prompts[:1]))
    padded = onnx_enc.encode(*_left_pad(PromptBuilder.collate(prompts[:1]), 128))
    assert np.abs(alone - padded).max() <= 1e-5


def test_faiss_topk_equals_model_full_scoring(trained) -> None:
    """The exact index over the exported item table returns the model's own top-k, train items excluded."""
    import torch

    from graphprompt.prompts import PromptBuilder
    from inference.encoders import open_encoder
    from inference.ranker import Ranker, candidate_boosts
    from model_store.index import load_index
    from training.evaluation.metrics import mask_items, topk_items

    ds, run, version, _ = trained
    users = np.arange(0, ds.n_users, 4)
    model, prompts = _eval_prompts(run, users)
    batch = PromptBuilder.collate(prompts)
    train = ds.train[users]
    excl = [train.indices[train.indptr[r] : train.indptr[r + 1]] for r in range(len(users))]
    with torch.no_grad():  # the training-side scores: inner product + the candidates' prior
        ids = torch.from_numpy(batch[0])
        vec, cand = model.encode(ids, *(torch.from_numpy(a) for a in batch[1:]))
        scores = model.item_scores(vec, cand, ids).numpy()
    expected = topk_items(mask_items(scores.copy(), train), 20)

    enc = open_encoder(version, providers=["CPUExecutionProvider"])
    ranker = Ranker(load_index(version, use_gpu=False), np.load(version / "item_embeddings.npy"))
    vectors, copies = enc.encode_full(*batch)
    boosts = candidate_boosts(batch[0], copies, model.cfg.n_words + model.cfg.n_users, excl)
    assert sum(len(b[0]) for b in boosts) > 0
    got, got_scores = ranker.search(vectors, 20, exclude=excl, boosts=boosts)
    mismatch = np.flatnonzero((got != expected).any(axis=1))
    for r in mismatch:  # only a swap of two items whose scores tie within float error is tolerated
        diff = np.flatnonzero(got[r] != expected[r])
        assert np.abs(scores[r, got[r, diff]] - scores[r, expected[r, diff]]).max() < 1e-5
    assert len(mismatch) <= 1
    assert not any(np.isin(got[r], excl[r]).any() for r in range(len(users)))
    np.testing.assert_allclose(got_scores, np.take_along_axis(scores, got, axis=1), atol=1e-4)


def test_offline_eval_of_version_reproduces_training_metrics(trained) -> None:
    """ONNX encoder + FAISS over the version's own files reproduce the run's test (and valid) metrics."""
    from training.evaluation.version_eval import evaluate_version

    ds, run, version, metrics = trained
    for split in ("test", "valid"):
        got = evaluate_version(version, ds, split)
        want = metrics[split]
        assert got["users"] == want["users"]
        for k in ("recall@20", "recall@40", "ndcg@100"):
            assert abs(got[k] - want[k]) <= 1e-3, (split, k, got[k], want[k])
    # the other masking protocol, against the torch model scored by training's own scoring function
    import torch

    from inference.item_item import ItemItem
    from training.evaluation.harness import evaluate
    from training.recipe.finetune import PredictiveData, score_users
    from training.recipe.train import load_run

    model, builder = load_run(run)
    seed = json.loads((run / "train_config.json").read_text())["seed"]
    pdata = PredictiveData(builder, builder.graph, seed, target_variants=1)
    term = ItemItem.load(run)
    assert term is not None and term.weight == 0.5
    ref = evaluate(
        lambda us: score_users(model, pdata, us, torch.device("cpu"), item_item=term),
        ds,
        "test",
        mask_valid_on_test=True,
    )
    got = evaluate_version(version, ds, "test", mask_valid_on_test=True)
    for k in ("recall@20", "recall@40", "ndcg@100"):
        assert abs(got[k] - ref[k]) <= 1e-3, (k, got[k], ref[k])
    # the service's prompt order (train items as stored) is a different prompt: still a valid evaluation
    stored = evaluate_version(version, ds, "test", history_order="stored")
    assert stored["users"] == metrics["test"]["users"] and 0 < stored["recall@40"] <= 1
    with pytest.raises(ValueError, match="history_order"):
        evaluate_version(version, ds, "test", history_order="newest")
    # guard against a vacuous match: an untrained (random) ranking scores clearly lower on this slice
    assert metrics["test"]["recall@40"] > 0.02


def test_int8_encoder_is_close_and_recorded(trained) -> None:
    from graphprompt.prompts import PromptBuilder
    from inference.encoders import open_encoder

    ds, run, version, _ = trained
    info = json.loads((version / "export.json").read_text())
    assert info["exporter"] in ("dynamo", "torchscript") and info["parity_max_abs_diff"] <= 1e-4
    assert info["int8"]["min_cosine"] > 0.99
    _, prompts = _eval_prompts(run, np.arange(16))
    batch = PromptBuilder.collate(prompts)
    fp = open_encoder(version, providers=["CPUExecutionProvider"]).encode(*batch)
    q = open_encoder(version, providers=["CPUExecutionProvider"], int8=True).encode(*batch)
    cos = (fp * q).sum(1) / (np.linalg.norm(fp, axis=1) * np.linalg.norm(q, axis=1))
    assert cos.min() > 0.99
    assert np.abs(fp - q).max() > 0  # it is a different (quantised) graph, not a copy


def test_cli_exports_publishes_and_promotes(trained, tmp_path) -> None:
    from typer.testing import CliRunner

    from edgerec.cli import app
    from model_store import ModelStore

    ds, run, _, metrics = trained
    store = tmp_path / "store"
    res = CliRunner().invoke(app, ["export", str(run), "--store", str(store), "--promote", "--index", "hnsw"])
    assert res.exit_code == 0, res.output
    s = ModelStore(store)
    version = s.current()
    assert version in res.output
    manifest = s.verify(version)
    assert manifest.dataset_fingerprint == ds.fingerprint
    assert manifest.metrics.test["recall@20"] == pytest.approx(metrics["test"]["recall@20"])
    assert manifest.config["n_embd"] == 32
    assert manifest.extra["export"]["exporter"] in ("dynamo", "torchscript")
    assert json.loads((s.path(version) / "index.json").read_text())["kind"] == "hnsw"
    assert "encoder.int8.onnx" not in manifest.files and "encoder.onnx" in manifest.files


def test_cli_errors_are_clear(trained, tmp_path) -> None:
    from typer.testing import CliRunner

    from edgerec.cli import app

    _, run, version, _ = trained
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tmp_path / "nope"), "--no-publish"])
    assert res.exit_code == 2 and "does not exist" in res.output
    half = tmp_path / "half"
    half.mkdir()
    for name in ("model_config.json", "train_config.json"):
        (half / name).write_text((run / name).read_text())
    res = runner.invoke(app, ["export", str(half), "--no-publish"])
    assert res.exit_code == 2 and "no checkpoint model.safetensors" in res.output
    res = runner.invoke(app, ["export", str(run), "--no-publish", "--out", str(version)])
    assert res.exit_code == 2 and "not empty" in res.output
    res = runner.invoke(app, ["export", str(run), "--no-publish", "--promote"])
    assert res.exit_code == 2 and "--promote needs --publish" in res.output


def test_export_refuses_another_dataset(trained, tmp_path) -> None:
    from training.export.exporter import ExportError, export_run

    ds, run, _, _ = trained
    other = ds.__class__(**{**ds.__dict__, "fingerprint": "0" * 64})
    other.save(tmp_path / "other")
    with pytest.raises(ExportError, match="not the one the run was trained on"):
        export_run(run, tmp_path / "v", dataset=tmp_path / "other")
    assert not (tmp_path / "v").exists()

"""Mechanics of the encoder export and of inference.encoders on a tiny random GraphGPT (no dataset needed).

The trained-model parity checks live in test_export.py; these cover both exporters, the input checks, the
encoder loader's choices and the export's refusal to keep an encoder that disagrees with torch.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inference.encoders import (  # noqa: E402
    OnnxEncoder,
    check_inputs,
    default_providers,
    open_encoder,
)
from inference.torch_encoder import TorchEncoder  # noqa: E402
from inference.torch_model import GraphGPT, ModelConfig  # noqa: E402
from training.export.exporter import ExportError, _export_checked, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def model() -> GraphGPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_words=40, n_users=6, n_items=9, n_layer=2, n_embd=16, n_head=2, n_positions=64, bias_scale=0.7
    )
    m = GraphGPT(cfg).eval()
    # two layers: the bias on id-token rows reaches the last (word) position only through a second layer
    with torch.no_grad():  # a non-trivial per-layer scale, so a dropped scale would show
        m.bias_scale.fill_(1.3)
    return m


@pytest.fixture(scope="module")
def dynamo_onnx(model, tmp_path_factory):
    """One dynamo export shared by the tests (each export takes seconds)."""
    path = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    export_onnx(model, path, _batch(model.cfg, 2, 7, 0), "dynamo")
    return path


def _batch(cfg: ModelConfig, b: int, length: int, seed: int):
    """Left-padded random prompts with a bias on id-token pairs only (the collate convention)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (b, length))
    lens = rng.integers(1, length + 1, b)
    lens[0] = length
    mask = (np.arange(length)[None] >= (length - lens)[:, None]).astype(np.int64)
    ids = ids * mask
    node = (ids >= cfg.n_words) & (mask > 0)
    bias = rng.choice([0.0, 1.0, 4 / 11, 3 / 11], size=(b, length, length)).astype(np.float32)
    bias *= node[:, :, None] & node[:, None, :]
    return ids, mask, bias


def _torch(model: GraphGPT, batch) -> np.ndarray:
    with torch.no_grad():
        return model.user_vector(*(torch.from_numpy(a) for a in batch)).numpy()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_both_exporters_match_torch_with_dynamic_shapes(model, dynamo_onnx, tmp_path, exporter) -> None:
    path = dynamo_onnx
    if exporter != "dynamo":
        path = tmp_path / "encoder.onnx"
        export_onnx(model, path, _batch(model.cfg, 2, 7, 0), exporter)
    enc = OnnxEncoder(path, providers=["CPUExecutionProvider"])
    assert enc.dim == 16 and enc.vocab_size == model.cfg.vocab_size and enc.max_length == 64
    for b, length in [(1, 5), (3, 12), (16, 40), (2, 64)]:
        batch = _batch(model.cfg, b, length, b * 100 + length)
        assert np.abs(enc.encode(*batch) - _torch(model, batch)).max() <= 1e-5


def test_bias_reaches_the_exported_graph(model, dynamo_onnx) -> None:
    enc = OnnxEncoder(dynamo_onnx, providers=["CPUExecutionProvider"])
    ids, mask, bias = _batch(model.cfg, 3, 12, 5)
    assert np.abs(bias).sum() > 0
    with_bias = enc.encode(ids, mask, bias)
    without = enc.encode(ids, mask, np.zeros_like(bias))
    assert np.abs(with_bias - without).max() > 1e-3
    np.testing.assert_allclose(without, _torch(model, (ids, mask, np.zeros_like(bias))), atol=1e-5)


@pytest.mark.parametrize("prior", [False, True])
def test_a_model_without_graph_attention_keeps_the_encoder_contract(tmp_path, prior) -> None:
    """A no-graph-bias model (attend_graph_bias=False) still exports all three inputs: the bias enters as
    0 * bias, so the exporter cannot drop it, and ORT matches torch; with the prior, the bias's last row
    still drives the candidate scores."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_words=40,
        n_users=6,
        n_items=9,
        n_layer=2,
        n_embd=16,
        n_head=2,
        n_positions=64,
        attend_graph_bias=False,
        candidate_prior=prior,
    )
    m = GraphGPT(cfg).eval()
    if prior:
        m.set_prior(1.0)
    path = tmp_path / "encoder.onnx"
    export_onnx(m, path, _batch(cfg, 2, 7, 0), "dynamo")
    enc = OnnxEncoder(path, providers=["CPUExecutionProvider"])  # refuses a graph without graph_bias
    ids, mask, bias = _batch(cfg, 3, 12, 5)
    bias[:, -1] = np.linspace(0.1, 1.0, 12, dtype=np.float32)
    vec, cand = enc.encode_full(ids, mask, bias)
    np.testing.assert_allclose(vec, enc.encode(ids, mask, np.zeros_like(bias)), atol=1e-6)
    np.testing.assert_allclose(vec, _torch(m, (ids, mask, bias)), atol=1e-5)
    assert (cand is not None) == prior
    if prior:
        is_item = (ids >= cfg.n_words + cfg.n_users) & (mask > 0)
        assert (cand[is_item] > 0).all()


def test_export_aborts_when_no_exporter_is_faithful(model, tmp_path) -> None:
    batches = [_batch(model.cfg, b, n, b + n) for b, n in [(1, 5), (3, 9), (3, 12)]]
    path = tmp_path / "encoder.onnx"
    with pytest.raises(ExportError, match="dynamo: max .* torchscript: max"):
        _export_checked(model, path, batches, atol=-1.0)  # no difference can be below a negative tolerance
    assert not path.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i, m, b: (i[0], m, b), "input_ids must be"),
        (lambda i, m, b: (i, m[:, :-1], b), "attention_mask shape"),
        (lambda i, m, b: (i, m, b[:, :-1]), "graph_bias shape"),
        (lambda i, m, b: (i, m * 2, b), "only 0 and 1"),
        (lambda i, m, b: (i, m * 0, b), "no real token"),
        (lambda i, m, b: (i + 1000, m, b), "outside the vocabulary"),
        (lambda i, m, b: (i, m, b * np.nan), "finite"),
        (lambda i, m, b: (i[:, :0], m[:, :0], b[:, :0, :0]), "empty"),
    ],
)
def test_bad_inputs_are_named(model, change, message) -> None:
    ids, mask, bias = _batch(model.cfg, 2, 6, 1)
    with pytest.raises(ValueError, match=message):
        check_inputs(*change(ids, mask, bias), vocab_size=model.cfg.vocab_size)


def test_too_long_prompts_are_refused(model) -> None:
    with pytest.raises(ValueError, match="exceed the model's 64 positions"):
        check_inputs(*_batch(model.cfg, 1, 65, 0), max_length=64)


def test_open_encoder_choices(model, dynamo_onnx, tmp_path) -> None:
    folder = tmp_path / "version"
    model.save(folder, "encoder.safetensors")
    assert isinstance(open_encoder(folder), TorchEncoder)  # no ONNX yet: torch fallback
    with pytest.raises(FileNotFoundError, match="no INT8 encoder"):
        open_encoder(folder, int8=True)
    shutil.copyfile(dynamo_onnx, folder / "encoder.onnx")
    onnx_enc = open_encoder(folder, providers=["CPUExecutionProvider"])
    torch_enc = open_encoder(folder, prefer="torch")
    assert isinstance(onnx_enc, OnnxEncoder) and isinstance(torch_enc, TorchEncoder)
    assert onnx_enc.providers == ["CPUExecutionProvider"] and torch_enc.providers == ["torch:cpu"]
    batch = _batch(model.cfg, 4, 10, 3)
    assert np.abs(onnx_enc.encode(*batch) - torch_enc.encode(*batch)).max() <= 1e-5
    with pytest.raises(ValueError, match="encoder must be"):
        open_encoder(folder, prefer="tf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no encoder"):
        open_encoder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="ONNX encoder was required"):
        open_encoder(tmp_path / "empty", prefer="onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_encoder(tmp_path / "missing")


def test_onnx_encoder_rejects_a_foreign_graph(tmp_path) -> None:
    path = tmp_path / "other.onnx"
    lin = torch.nn.Linear(3, 2)
    torch.onnx.export(lin, (torch.zeros(1, 3),), str(path), dynamo=False, input_names=["x"])
    with pytest.raises(ValueError, match="not the encoder contract"):
        OnnxEncoder(path, providers=["CPUExecutionProvider"])


def test_default_providers_end_with_cpu() -> None:
    providers = default_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert set(providers) <= {"CUDAExecutionProvider", "CPUExecutionProvider"}

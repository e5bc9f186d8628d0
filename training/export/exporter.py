"""``edgerec export``: a trained run folder → a model version folder (docs/ARCHITECTURE.md §4) → the store.

What a version holds, and why the served answers are the trained model's answers:

* ``encoder.onnx`` is ``GraphGPT.user_vector`` exported with dynamic batch and length. Every export is checked
  against the torch model on real predictive prompts of several lengths and batch sizes; a difference above
  ``atol`` (1e-4) aborts the export, so a version never carries an encoder that disagrees with the trained
  model.
* ``item_embeddings.npy`` is the (tied, bias-free) item head, so a FAISS inner-product index over it returns
  the model's own top-k.
* ``graph/``, ``tokenizer.json`` and ``prompt_config.json`` are the run's own, so serving builds the same
  prompts.

ONNX export notes (measured here: torch 2.13 CPU, transformers 5.24, onnx 1.23, onnxscript 0.7.2, onnxruntime
1.32):

* ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript, opset 18-20) with ``torch.export.Dim``
  dynamic batch/length exports a plain HF ``GPT2Model`` fed through ``inputs_embeds`` with a float 4D mask,
  in both ``sdpa`` and ``eager`` attention (max |diff| 5e-7 over B in {1, 3, 16} x L in {5, 32, 128});
  tracing at B=2 still serves B=1. The legacy TorchScript exporter (``dynamo=False``, opset 17) also works
  (same error).
* GraphGPT's registered attention function (``edgerec_graph``, fused SDPA plus the graph bias) fails in the
  dynamo exporter's decomposition step: the ``transpose(1, 2).contiguous()`` after the CPU flash-attention
  decomposition gets wrong strides ("Cannot view a tensor with shape [B, L, H, d] and strides ..."). Fix used
  here: during export only, ``torch.nn.functional.scaled_dot_product_attention`` is swapped for its textbook
  math form (softmax(QKᵀ·scale + mask)·V); the model's own code still composes mask + per-layer scale · bias,
  so nothing of the model is re-implemented. The exported graph matches the unmodified (SDPA) torch model to
  ~1.5e-6.
* Opset 20 is used: from opset 20 the exporter writes ``gelu_pytorch_tanh`` as one ONNX ``Gelu`` op instead
  of ~8 elementwise ops, which made batch-16 calls 15-18 % faster on ONNX Runtime's CPU provider (opset 18:
  43 -> 35 ms at 16 x 64) at the same 1.2e-6 from torch. Opset 23 needs no SDPA swap at all (SDPA becomes
  the ONNX ``Attention`` op, ~1.3e-6 from torch) but its CPU kernel was no faster, and fewer execution
  providers implement it.
* If the dynamo path fails or misses the tolerance, the legacy TorchScript exporter on the unmodified model is
  tried (it also gives ~1.5e-6 here); which one produced the file is recorded in ``export.json``.
* ``onnxruntime.quantization.quantize_dynamic`` (INT8 weights, MatMul) is optional (``encoder.int8.onnx``);
  its cost is measured, not assumed (see ``benchmarks/encoder_bench.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.encoders import (
    CANDIDATE_OUTPUT_NAME,
    INPUT_NAMES,
    MODEL_CONFIG_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    OUTPUT_NAME,
    TORCH_WEIGHTS_FILE,
    Encoder,
    OnnxEncoder,
)
from inference.item_item import ITEM_ITEM_DIR
from inference.version import EXPORT_INFO_FILE, open_version
from training.export.neighbourhoods import write_neighbourhoods

OPSET = 20  # see the module docstring: native Gelu
ATOL = 1e-4
RUN_WEIGHTS = "model.safetensors"
# Files a finished training run must hold (training/recipe/train.py writes them); graph/ is a folder.
RUN_FILES = ("model_config.json", "prompt_config.json", "tokenizer.json", "train_config.json", "metrics.json")


class ExportError(RuntimeError):
    """A run cannot be exported (missing files, wrong data) or the exported encoder disagrees with torch."""


# ------------------------------------------------------------------------------------------------ run checks
def check_run(run_dir: str | os.PathLike[str], weights: str = RUN_WEIGHTS) -> Path:
    """The run folder, or an ExportError naming what is missing (and what produces it)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ExportError(f"run folder {run} does not exist; train one with `edgerec train`")
    if not (run / weights).is_file():
        raise ExportError(
            f"{run} has no checkpoint {weights}: training did not finish (it is written after testing); "
            f"finish it with `edgerec train <dataset> --run-dir {run} --resume`"
        )
    missing = [f for f in RUN_FILES if not (run / f).is_file()]
    if not (run / "graph").is_dir():
        missing.append("graph/")
    if missing:
        raise ExportError(f"{run} is not a complete training run: missing {', '.join(missing)}")
    return run


def load_run_dataset(run: Path, dataset: str | os.PathLike[str] | None = None):
    """The prepared dataset the run was trained on; its fingerprint must match the run's metrics.json."""
    from training.data.sources import load_dataset

    spec = (
        str(dataset)
        if dataset is not None
        else json.loads((run / "train_config.json").read_text())["dataset"]
    )
    try:
        data = load_dataset(spec)
    except FileNotFoundError as exc:
        raise ExportError(
            f"cannot load the run's dataset ({exc}); pass the prepared folder with --dataset"
        ) from exc
    want = json.loads((run / "metrics.json").read_text()).get("fingerprint")
    if want and data.fingerprint != want:
        raise ExportError(
            f"dataset {spec} (fingerprint {data.fingerprint[:12]}) is not the one the run was trained on "
            f"({want[:12]}); pass the right prepared folder with --dataset"
        )
    return data


# ------------------------------------------------------------------------------------------------ ONNX
def user_vector_module(model):
    """The exported module: (input_ids, attention_mask, graph_bias) -> user_vector [B, D], plus
    candidate_scores [B, L] when the model has the candidate prior (torch imported lazily, so this module
    stays importable without torch for the offline-evaluation helpers)."""
    import torch

    class UserVector(torch.nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, graph_bias):
            if self.m.cfg.candidate_prior:
                return self.m.encode(input_ids, attention_mask, graph_bias)
            return self.m.user_vector(input_ids, attention_mask, graph_bias)

    return UserVector(model).eval()


@contextlib.contextmanager
def _math_sdpa() -> Iterator[None]:
    """Swap F.scaled_dot_product_attention for its math form while exporting (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if dropout_p or is_causal or enable_gqa:
            raise ExportError(
                "export expects SDPA without dropout, is_causal or GQA (the model passes a 4D mask)"
            )
        s = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
        logits = torch.matmul(query, key.transpose(-1, -2)) * s
        if attn_mask is not None:
            logits = logits + attn_mask
        return torch.matmul(torch.softmax(logits, dim=-1), value)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def export_onnx(model, path: Path, sample: tuple[np.ndarray, np.ndarray, np.ndarray], exporter: str) -> None:
    """Write ``model.user_vector`` as ONNX (dynamic batch and length) with one of the two exporters."""
    import torch

    module = user_vector_module(model)
    args = tuple(torch.from_numpy(a) for a in sample)
    outputs = [OUTPUT_NAME, CANDIDATE_OUTPUT_NAME] if model.cfg.candidate_prior else [OUTPUT_NAME]
    names = {"input_names": list(INPUT_NAMES), "output_names": outputs}
    with warnings.catch_warnings(), torch.no_grad(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")  # the exporters are chatty (deprecations, dim renames)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", max=1 << 16)
            length = torch.export.Dim("length", max=model.cfg.n_positions)
            shapes = {
                "input_ids": {0: batch, 1: length},
                "attention_mask": {0: batch, 1: length},
                "graph_bias": {0: batch, 1: length, 2: length},
            }
            with _math_sdpa(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                prog = torch.onnx.export(
                    module, args, dynamo=True, dynamic_shapes=shapes, opset_version=OPSET, **names
                )
            prog.save(str(path))
        elif exporter == "torchscript":
            axes = {n: {0: "batch", 1: "length"} for n in INPUT_NAMES[:2]}
            axes["graph_bias"] = {0: "batch", 1: "length", 2: "length"}
            axes[OUTPUT_NAME] = {0: "batch"}
            axes[CANDIDATE_OUTPUT_NAME] = {0: "batch", 1: "length"}
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=17, dynamic_axes=axes, **names
            )
            _fix_output_dim(path, model.cfg.n_embd)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
    _stamp_metadata(path, model.cfg)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Raise a logger to ERROR for a while: the dynamo exporter warns once per torchvision op it cannot find
    (none is ours) and quantize_dynamic hints at optional pre-processing."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _fix_output_dim(path: Path, dim: int) -> None:
    """The TorchScript exporter leaves D symbolic; pin it so consumers read the vector size from the graph."""
    import onnx

    m = onnx.load(str(path))
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = dim
    onnx.save(m, str(path))


def _stamp_metadata(path: Path, cfg) -> None:
    """Record limits the encoder cannot check by itself (the model clamps ids beyond its vocabulary)."""
    import onnx

    m = onnx.load(str(path))
    meta = {"vocab_size": cfg.vocab_size, "max_length": cfg.n_positions, "dim": cfg.n_embd}
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=f"edgerec.{k}", value=str(v))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def torch_vectors(model, batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """The user vectors, and the candidate scores after them along the last axis when the model has them
    (what :func:`encoder_outputs` returns for an encoder, so one max-difference covers both outputs)."""
    import torch

    with torch.no_grad():
        vec, cand = model.encode(*(torch.from_numpy(a) for a in batch))
        parts = [vec] if cand is None else [vec, cand]
        return torch.cat([p.float() for p in parts], dim=-1).numpy()


def encoder_outputs(encoder: Encoder, batch: tuple[np.ndarray, ...]) -> np.ndarray:
    vec, cand = encoder.encode_full(*batch)
    return vec if cand is None else np.concatenate([vec, cand], axis=-1)


def parity_batches(builder, data, seed: int, n_users: int = 64) -> list[tuple[np.ndarray, ...]]:
    """Real predictive prompts (the ones test scoring uses) grouped into batches of 1, 3 and 16 prompts,
    drawn from the shortest, median and longest prompts so that several lengths and paddings are covered."""
    from graphprompt.prompts import PromptBuilder
    from training.recipe.finetune import PredictiveData

    pdata = PredictiveData(builder, builder.graph, seed, target_variants=1)
    users = np.flatnonzero(np.diff(data.train.indptr) > 0)
    pick = np.random.default_rng([seed, 2024]).choice(users, size=min(n_users, len(users)), replace=False)
    prompts = sorted((pdata.eval_prompt(int(u)) for u in pick), key=len)
    mid = len(prompts) // 2
    groups = [prompts[:1], prompts[-1:], prompts[mid : mid + 1], prompts[:3], prompts[mid - 1 : mid + 2]]
    groups += [prompts[-3:], prompts[:16], prompts[-16:], prompts[:: max(1, len(prompts) // 16)][:16]]
    return [PromptBuilder.collate(g) for g in groups if g]


def max_abs_diff(model, encoder: Encoder, batches: Sequence[tuple[np.ndarray, ...]]) -> float:
    return max(float(np.abs(torch_vectors(model, b) - encoder_outputs(encoder, b)).max()) for b in batches)


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic INT8 quantisation: the Gemm/MatMul weights (run as MatMulInteger with activations quantised on
    the fly) and the embedding tables (Gather + DequantizeLinear) become int8; attention stays float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # it logs (root logger) a hint to run shape-inference pre-processing, which changes nothing here
    with _quiet_logger(""):
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def int8_parity(fp32: Encoder, int8: Encoder, batches: Sequence[tuple[np.ndarray, ...]]) -> dict[str, float]:
    diffs, cos = [], []
    for b in batches:
        a, q = fp32.encode(*b), int8.encode(*b)
        diffs.append(float(np.abs(encoder_outputs(fp32, b) - encoder_outputs(int8, b)).max()))
        cos.append(float(((a * q).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(q, axis=-1))).min()))
    return {"max_abs_diff": max(diffs), "min_cosine": min(cos)}


# ------------------------------------------------------------------------------------------------ export
def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    index_kind: str = "exact",
    int8: bool = False,
    *,
    dataset: str | os.PathLike[str] | None = None,
    weights: str = RUN_WEIGHTS,
    atol: float = ATOL,
    overwrite: bool = False,
    index_params: dict[str, Any] | None = None,
) -> Path:
    """Write the model version folder of a finished run into ``out_dir`` (atomically) and return it.

    Raises ExportError when the run is incomplete, its dataset does not match, or no exporter produces an ONNX
    encoder within ``atol`` of the torch model.
    """
    import torch

    from graphprompt.graph import BipartiteGraph
    from model_store.index import build_index
    from training.recipe.train import load_run

    t0 = time.time()
    run = check_run(run_dir, weights)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} already exists and is not empty; choose another --out or remove it")
    data = load_run_dataset(run, dataset)
    train_cfg = json.loads((run / "train_config.json").read_text())
    run_metrics = json.loads((run / "metrics.json").read_text())
    model, builder = load_run(run, weights)
    model.eval()
    _check_consistent(model, builder, data)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        served = _serving_model(model)
        served.save(tmp, TORCH_WEIGHTS_FILE)
        batches = parity_batches(builder, data, int(train_cfg.get("seed", 0)))
        info: dict[str, Any] = {"atol": atol, "opset": OPSET, "torch": torch.__version__}
        info.update(_export_checked(served, tmp / ONNX_FILE, batches, atol))

        emb = served.item_emb.weight.detach().float().numpy()
        np.save(tmp / "item_embeddings.npy", np.ascontiguousarray(emb, dtype=np.float32))
        build_index(emb, index_kind, out_dir=tmp, **(index_params or {}))
        BipartiteGraph.from_matrix(data.train, data.times).save(tmp / "graph")
        _write_json(tmp / "user_ids.json", data.user_ids)
        _write_json(tmp / "item_ids.json", data.item_ids)
        np.save(tmp / "popularity.npy", np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32))
        items = items_json(data)
        _write_json(tmp / "items.json", items)
        info["text_model"] = _write_text_model(tmp, served, builder, items, emb, data, train_cfg)
        shutil.copyfile(run / "tokenizer.json", tmp / "tokenizer.json")
        shutil.copyfile(run / "prompt_config.json", tmp / "prompt_config.json")
        if (run / ITEM_ITEM_DIR).is_dir():  # the ranker's item-item term, fitted with the prior
            shutil.copytree(run / ITEM_ITEM_DIR, tmp / ITEM_ITEM_DIR)
        _write_json(tmp / "metrics.json", run_metrics)
        info["neighbourhoods"] = write_neighbourhoods(builder, tmp)  # the service's cache misses, precomputed

        if int8:
            quantize_int8(tmp / ONNX_FILE, tmp / ONNX_INT8_FILE)
            fp = OnnxEncoder(tmp / ONNX_FILE, providers=["CPUExecutionProvider"])
            q = OnnxEncoder(tmp / ONNX_INT8_FILE, providers=["CPUExecutionProvider"])
            info["int8"] = int8_parity(fp, q, batches)
        info.update(
            run_dir=str(run.resolve()),
            dataset=data.name,
            dataset_fingerprint=data.fingerprint,
            seed=int(train_cfg.get("seed", 0)),
            index_kind=index_kind,
            seconds=round(time.time() - t0, 1),
        )
        _write_json(tmp / EXPORT_INFO_FILE, info)
        # The same opening and ranking path the service takes: a version that fails here is never written.
        open_version(tmp).check()
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_text_model(tmp: Path, model, builder, items, emb, data, train_cfg) -> dict[str, Any]:
    """Fit and save the text → item-vector model new catalogue items are served with (a report of the
    validation choice; ``skipped`` when the data has too little item text)."""
    from inference.item_text import item_text
    from training.export.text_model import fit_text_model

    word_emb = model.word_emb.weight.detach().float().numpy()[: builder.tok.n_words]
    texts = [item_text(row) for row in items]
    text_model, report = fit_text_model(
        builder.tok, word_emb, texts, emb, data.train, seed=int(train_cfg.get("seed", 0))
    )
    if text_model is not None:
        text_model.save(tmp)
    return report


def _check_consistent(model, builder, data) -> None:
    c = model.cfg
    tok = builder.tok
    if (c.n_users, c.n_items, c.n_words) != (data.n_users, data.n_items, tok.n_words) or (
        tok.n_users,
        tok.n_items,
    ) != (data.n_users, data.n_items):
        raise ExportError(
            f"run does not fit its dataset: model {c.n_words} words/{c.n_users} users/{c.n_items} items, "
            f"tokenizer {tok.n_words}/{tok.n_users}/{tok.n_items}, "
            f"dataset {data.n_users} users/{data.n_items} items"
        )
    g = builder.graph
    if g.ui.nnz != data.train.nnz or (g.ui != data.train.astype(g.ui.dtype)).nnz:
        raise ExportError("the run's graph/ is not the dataset's train graph")


def _serving_model(model):
    """The model without what serving never uses (the content-only id tables): smaller encoder.safetensors."""
    from inference.torch_model import GraphGPT, ModelConfig

    if not model.cfg.content_tables:
        return model
    cfg = ModelConfig.from_dict({**model.cfg.to_dict(), "content_tables": False})
    served = GraphGPT(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("content_")}
    served.load_state_dict(state)
    return served.eval()


def _export_checked(model, path: Path, batches, atol: float) -> dict[str, Any]:
    """Try the dynamo exporter, then TorchScript; keep the first whose output is within ``atol`` of torch."""
    problems = []
    sample = batches[min(3, len(batches) - 1)]  # a batch of 3 real prompts: no 0/1 specialisation of B or L
    for exporter in ("dynamo", "torchscript"):
        t0 = time.time()
        try:
            export_onnx(model, path, sample, exporter)
            diff = max_abs_diff(model, OnnxEncoder(path, providers=["CPUExecutionProvider"]), batches)
        except Exception as exc:  # an exporter failing is expected on some versions: try the next one
            problems.append(
                f"{exporter}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            continue
        if diff <= atol:
            shapes = sorted({tuple(b[0].shape) for b in batches})
            return {
                "exporter": exporter,
                "parity_max_abs_diff": diff,
                "parity_shapes": [list(s) for s in shapes],
                "export_seconds": round(time.time() - t0, 1),
            }
        problems.append(f"{exporter}: max |onnx - torch| = {diff:.2e} > {atol:.0e}")
    path.unlink(missing_ok=True)
    raise ExportError("no exporter produced a faithful ONNX encoder: " + "; ".join(problems))


def items_json(data) -> list[dict[str, str]]:
    """Per item ``{"id": raw id, "title": ..., <other text fields>}`` for responses (empty fields omitted)."""
    fields = sorted(data.item_text)
    out = []
    for i, raw in enumerate(data.item_ids):
        row = {"id": raw}
        for f in fields:
            text = data.item_text[f][i]
            if text:
                row[f] = text
        out.append(row)
    return out


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# ------------------------------------------------------------------------------------------------ store
def version_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Store metadata of an exported folder: dataset fingerprint, model config, metrics, export info."""
    folder = Path(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    info = json.loads((folder / EXPORT_INFO_FILE).read_text())

    def floats(d: dict) -> dict[str, float]:
        return {k: float(v) for k, v in (d or {}).items() if isinstance(v, int | float)}

    return {
        "dataset_fingerprint": info["dataset_fingerprint"],
        "model_config": json.loads((folder / MODEL_CONFIG_FILE).read_text()),
        "metrics": {"valid": floats(metrics.get("valid")), "test": floats(metrics.get("test"))},
        "extra": {
            "dataset": info["dataset"],
            "best_epoch": metrics.get("best_epoch"),
            "prompt_config": json.loads((folder / "prompt_config.json").read_text()),
            "export": {
                k: info[k] for k in ("exporter", "opset", "parity_max_abs_diff", "index_kind") if k in info
            }
            | ({"int8": info["int8"]} if "int8" in info else {}),
        },
    }


def code_version() -> dict[str, str | None]:
    """The installed edgerec release plus the git commit of the source tree this code runs from, if any:
    what the store records as the code that produced a version."""
    import importlib.metadata
    import re
    import subprocess

    try:
        release = importlib.metadata.version("edgerec")
    except importlib.metadata.PackageNotFoundError:
        release = "unknown (not installed)"
    commit = None
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out.stdout.strip()):
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"edgerec": release, "git_commit": commit}


def publish(
    folder: str | os.PathLike[str], store_root: str | os.PathLike[str] | None = None, promote: bool = False
) -> str:
    """Publish an exported folder into the model store (and promote it); returns the version id."""
    from model_store import ModelStore

    store = ModelStore(store_root)
    version = store.publish(folder, version_metadata(folder) | {"code_version": code_version()})
    if promote:
        store.promote(version)
    return version

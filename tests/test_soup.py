"""Checkpoint soup (``training/recipe/soup.py``): which epochs are kept and the greedy average (a run that
tests its soup: ``tests/test_train.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from inference.torch_model import GraphGPT, ModelConfig
from training.recipe import soup


def _model() -> GraphGPT:
    cfg = ModelConfig(n_words=20, n_users=4, n_items=6, n_layer=1, n_embd=8, n_head=2, dropout=0.0)
    return GraphGPT(cfg).eval()


def _epochs(stage: Path, m: GraphGPT, scores: list[float], size: int) -> dict:
    """Fine-tuning's bookkeeping for epochs whose weights are all filled with the epoch's number."""
    state: dict = {}
    for epoch, score in enumerate(scores):
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(float(epoch))
        soup.keep_epoch(stage, m, state, epoch, score, size)
        soup.prune(stage, state)
    return state


def test_keeps_the_best_epochs_files_only(tmp_path: Path) -> None:
    state = _epochs(tmp_path, _model(), [0.1, 0.3, 0.2, 0.25, 0.05], size=3)
    assert [e for _, e in state["soup"]] == [1, 3, 2]
    files = sorted(f.name for f in (tmp_path / soup.SOUP_DIR).glob("epoch-*.safetensors"))
    assert files == ["epoch-1.safetensors", "epoch-2.safetensors", "epoch-3.safetensors"]


def test_greedy_soup_joins_only_epochs_that_raise_validation(tmp_path: Path) -> None:
    m = _model()
    state = _epochs(tmp_path, m, [0.1, 0.3, 0.2, 0.25], size=3)  # kept, best first: 1, 3, 2
    name = next(n for n, _ in m.named_parameters())

    def valid() -> float:
        # a validation score that likes weights near 2.0: avg(1, 3) = 2 joins, then avg(1, 3, 2) = 2 ties
        return 1.0 - abs(float(dict(m.named_parameters())[name].flatten()[0]) - 2.0)

    rec = soup.make_soup(tmp_path, m, state, valid)
    assert rec["members"] == [1, 3]
    assert [t["joined"] for t in rec["tries"]] == [True, False]
    avg = load_file(str(tmp_path / soup.SOUP_WEIGHTS))[name]
    assert torch.allclose(avg, torch.full_like(avg, 2.0))
    # the model is left holding the best epoch's weights; the record is on disk
    assert float(dict(m.named_parameters())[name].flatten()[0]) == 1.0
    assert json.loads((tmp_path / soup.SOUP_RECORD).read_text()) == rec
    # a soup that nothing joins leaves no weights behind (the best epoch's are used)
    rec = soup.make_soup(tmp_path, m, state, lambda: -1.0)
    assert rec["members"] == [1] and soup.soup_weights(tmp_path) is None

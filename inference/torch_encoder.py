"""The torch encoder: ``GraphGPT`` from a version's ``encoder.safetensors`` + ``model_config.json``.

Imported only when a caller asks for torch (``open_encoder(..., prefer="torch")``) or a version has no ONNX
encoder, so the service's default path never imports torch. Tests use it as the reference the ONNX encoder
must match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from inference.encoders import MODEL_CONFIG_FILE, TORCH_WEIGHTS_FILE, check_inputs
from inference.torch_model import GraphGPT


class TorchEncoder:
    """The torch fallback: ``GraphGPT`` from ``encoder.safetensors`` + ``model_config.json`` (lazy torch).

    Used when a version has no ONNX encoder, and by tests as the reference the ONNX encoder must match."""

    def __init__(
        self, version_dir: str | Path, device: str | None = "cpu", threads: int | None = None
    ) -> None:
        """``device=None``: CUDA when torch sees a GPU, else the CPU."""
        if threads:
            torch.set_num_threads(threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = Path(version_dir)
        for name in (TORCH_WEIGHTS_FILE, MODEL_CONFIG_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"no torch encoder in {folder}: {name} is missing")
        self.device = torch.device(device)
        self.model = GraphGPT.load(folder, TORCH_WEIGHTS_FILE, device=str(self.device)).to(self.device).eval()
        self.vocab_size = int(self.model.cfg.vocab_size)
        self.max_length = int(self.model.cfg.n_positions)

    @property
    def dim(self) -> int:
        return int(self.model.cfg.n_embd)

    @property
    def providers(self) -> list[str]:
        return [f"torch:{self.device}"]

    @property
    def has_candidates(self) -> bool:
        return self.model.cfg.candidate_prior

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray, graph_bias: np.ndarray) -> np.ndarray:
        return self.encode_full(input_ids, attention_mask, graph_bias)[0]

    def encode_full(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, graph_bias: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        arrays = check_inputs(input_ids, attention_mask, graph_bias, self.vocab_size, self.max_length)
        with torch.inference_mode():
            ids, mask, bias = (torch.from_numpy(a).to(self.device) for a in arrays)
            vec, cand = self.model.encode(ids, mask, bias)
            return vec.float().cpu().numpy(), (None if cand is None else cand.float().cpu().numpy())

    def __repr__(self) -> str:
        return f"TorchEncoder(dim={self.dim}, device={self.device})"

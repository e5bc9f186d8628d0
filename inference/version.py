"""A model version opened for inference, and the one ranking path every caller shares.

``open_version(folder)`` loads what answering needs from a version folder (an export, or a store version
that ``ModelStore.open_version`` has verified): the prompt builder over the version's train graph, the
encoder (:func:`inference.encoders.open_encoder`, the one rule), the FAISS ranker, the id maps, item
metadata and popularity. ``InferenceVersion.rank(prompts, histories, exclude, k)`` encodes, applies the
candidate prior and searches; the service (micro-batched, with cached user vectors), ``edgerec export``'s
check and the offline evaluation of a version all run through :meth:`~InferenceVersion.encode` and
:meth:`~InferenceVersion.search`, so the served answer is the evaluated answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphprompt.graph import BipartiteGraph
from graphprompt.prompts import EncodedPrompt, PromptBuilder, PromptConfig
from graphprompt.tokenizer import RecTokenizer
from inference.encoders import (
    MODEL_CONFIG_FILE,
    ONNX_FILE,
    TORCH_WEIGHTS_FILE,
    Encoder,
    open_encoder,
)
from inference.item_item import ITEM_ITEM_DIR, ItemItem
from inference.item_text import TextVectoriser
from inference.neighbourhoods import NBR_FILE, NBR_META, StoredNeighbourhoods, open_neighbourhoods
from inference.ranker import Boost, Ranker, candidate_boosts, merge_boosts
from model_store.index import INDEX_FILE, INDEX_META, load_index

EXPORT_INFO_FILE = "export.json"
# Every file a version holds (graph/ is a folder); encoder.int8.onnx and the text model are optional.
VERSION_FILES = (
    ONNX_FILE,
    TORCH_WEIGHTS_FILE,
    MODEL_CONFIG_FILE,
    "item_embeddings.npy",
    INDEX_FILE,
    INDEX_META,
    "graph",
    "user_ids.json",
    "item_ids.json",
    "popularity.npy",
    "items.json",
    "tokenizer.json",
    "prompt_config.json",
    "metrics.json",
    EXPORT_INFO_FILE,
    NBR_FILE,
    NBR_META,
    ITEM_ITEM_DIR,
)
# Versions exported before these existed open without them (inference/neighbourhoods.py, item_item.py).
OPTIONAL_FILES = (NBR_FILE, NBR_META, ITEM_ITEM_DIR)
ENCODE_CHUNK = 64  # prompts per encoder call when the caller does not say (length-sorted, see encode)


def load_builder(folder: str | Path) -> PromptBuilder:
    """The prompt builder of a run or version folder: its saved prompt config, tokenizer and train graph."""
    folder = Path(folder)
    cfg = PromptConfig.load(folder / "prompt_config.json")
    tok = RecTokenizer.load(folder, counts=cfg.tokenizer)
    return PromptBuilder(tok, BipartiteGraph.load(folder / "graph"), cfg)


def _read_json(folder: Path, name: str) -> Any:
    with open(folder / name, encoding="utf-8") as f:
        return json.load(f)


@dataclass(eq=False)
class InferenceVersion:
    path: Path
    builder: PromptBuilder
    encoder: Encoder
    ranker: Ranker
    user_ids: list[str]
    item_ids: list[str]
    items: list[dict[str, Any]]
    popularity: np.ndarray  # float32 [I] train interaction counts
    # every train user's neighbourhood and hop distances, memory-mapped (None: an older version)
    neighbourhoods: StoredNeighbourhoods | None = None
    text: TextVectoriser | None = None  # new items' text → item vectors (None: the version has no text model)
    item_item: ItemItem | None = None  # the ranker's item-item term (None: a version without one)

    @property
    def graph(self) -> BipartiteGraph:
        return self.builder.graph

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def encode(
        self,
        prompts: Sequence[EncodedPrompt],
        histories: Sequence[np.ndarray],
        chunk: int = ENCODE_CHUNK,
    ) -> tuple[np.ndarray, list[Boost | None]]:
        """(user vectors float32 [B, D], per-prompt candidate boosts or None) for ``prompts`` in order.

        Prompts run in length-sorted chunks: padding short prompts to the longest of a big batch costs a CPU
        more than extra calls do (measured: 32 mixed prompts ~1.8x slower per prompt than sorted chunks of
        8). ``histories[i]`` (item indices) is never boosted for prompt ``i``."""
        vectors = np.empty((len(prompts), self.ranker.dim), dtype=np.float32)
        boosts: list[Boost | None] = [None] * len(prompts)
        order = np.argsort([len(p) for p in prompts], kind="stable")
        offset = self.builder.tok.item_offset
        for start in range(0, len(order), max(1, chunk)):
            rows = order[start : start + chunk]
            batch = PromptBuilder.collate([prompts[i] for i in rows])
            vectors[rows], cand = self.encoder.encode_full(*batch)
            found = candidate_boosts(batch[0], cand, offset, [histories[i] for i in rows])
            for i, b in zip(rows, found or (), strict=False):
                boosts[i] = b
        if self.item_item is not None and self.item_item.active and len(prompts):
            terms = self.item_item.boosts(vectors, histories)
            for i, t in enumerate(terms):
                boosts[i] = merge_boosts(boosts[i], t)
        return vectors, boosts

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray],
        boosts: Sequence[Boost | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [B, k], scores float32 [B, k]) best first; -1 / -inf pad short rows."""
        if boosts is not None and all(b is None for b in boosts):
            boosts = None
        return self.ranker.search(vectors, k, exclude=exclude, boosts=boosts)

    def rank(
        self,
        prompts: Sequence[EncodedPrompt],
        histories: Sequence[np.ndarray],
        exclude: Sequence[np.ndarray],
        k: int,
        chunk: int = ENCODE_CHUNK,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode, apply the candidate prior, search: the top-k of each prompt outside its exclusions."""
        vectors, boosts = self.encode(prompts, histories, chunk)
        return self.search(vectors, k, exclude, boosts)

    def check(self) -> None:
        """One real forward pass and search, so a broken version fails when it is opened (before a swap or
        a publish), and the first request does not pay for lazy initialisation."""
        hist = self.graph.user_items(0)[:5] if self.graph.n_users else np.arange(min(5, self.n_items))
        hist = np.asarray(hist, dtype=np.int64)
        prompt = self.builder.predictive(None, hist, None)
        vec, _ = self.encode([prompt], [hist])
        if vec.shape != (1, self.ranker.dim) or not np.isfinite(vec).all():
            raise ValueError(f"encoder check returned shape {vec.shape} or non-finite values")
        self.search(vec, min(10, self.n_items), [hist])


@dataclass
class EncoderChoice:
    """How to pick a version's encoder (see :func:`inference.encoders.open_encoder`)."""

    prefer: str = "auto"  # auto | onnx | torch
    int8: bool = False
    use_gpu: str = "auto"  # auto | yes | no
    threads: int | None = None
    providers: list[str] | None = field(default=None)


def open_version(
    folder: str | Path,
    choice: EncoderChoice | None = None,
    *,
    encoder: Encoder | None = None,
) -> InferenceVersion:
    """Open a version folder for inference (``encoder`` overrides ``choice``, e.g. a test's torch encoder).

    Raises FileNotFoundError for a missing part and ValueError when the parts disagree (counts, dimension)."""
    folder = Path(folder)
    choice = choice or EncoderChoice()
    missing = [name for name in VERSION_FILES if not (folder / name).exists()]
    optional = (ONNX_FILE, TORCH_WEIGHTS_FILE, MODEL_CONFIG_FILE, *OPTIONAL_FILES)
    missing = [n for n in missing if n not in optional]
    if missing:
        raise FileNotFoundError(f"{folder} is not a model version: missing {', '.join(missing)}")
    builder = load_builder(folder)
    enc = encoder or open_encoder(
        folder,
        choice.prefer,
        int8=choice.int8,
        use_gpu=choice.use_gpu,
        threads=choice.threads,
        providers=choice.providers,
    )
    # memory-mapped read-only: worker processes share the page cache's copy (a float32 file is not copied)
    emb = np.load(folder / "item_embeddings.npy", mmap_mode="r", allow_pickle=False)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    index = load_index(folder, use_gpu={"auto": "auto", "yes": True, "no": False}[choice.use_gpu])
    ranker = Ranker(index, emb)
    version = InferenceVersion(
        path=folder,
        builder=builder,
        encoder=enc,
        ranker=ranker,
        user_ids=[str(u) for u in _read_json(folder, "user_ids.json")],
        item_ids=[str(i) for i in _read_json(folder, "item_ids.json")],
        items=_read_json(folder, "items.json"),
        popularity=np.asarray(np.load(folder / "popularity.npy", allow_pickle=False), dtype=np.float32),
        neighbourhoods=open_neighbourhoods(folder, builder),
        text=TextVectoriser.load(folder, builder.tok),
        item_item=ItemItem.load(folder),
    )
    _check_consistent(version)
    return version


def _check_consistent(v: InferenceVersion) -> None:
    graph = v.graph
    counts = {
        "item_ids.json": len(v.item_ids),
        "items.json": len(v.items),
        "popularity.npy": len(v.popularity),
        "item_embeddings.npy": v.ranker.item_embeddings.shape[0],
        "index.faiss": v.ranker.n_items,
    }
    bad = {name: n for name, n in counts.items() if n != graph.n_items}
    if bad or len(v.user_ids) != graph.n_users:
        raise ValueError(
            f"version {v.path.name} is inconsistent: graph has {graph.n_users} users / {graph.n_items} "
            "items, "
            f"but {bad or {'user_ids.json': len(v.user_ids)}}"
        )
    if v.encoder.dim != v.ranker.dim:
        raise ValueError(f"encoder dim {v.encoder.dim} != item embedding dim {v.ranker.dim}")
    ii = v.item_item
    if ii is not None and (ii.n_items != graph.n_items or ii.item_cov.shape != (v.ranker.dim, v.ranker.dim)):
        raise ValueError(
            f"version {v.path.name} is inconsistent: its item-item term covers {ii.n_items} items and "
            f"{ii.item_cov.shape[0]} dimensions, the graph {graph.n_items} items, the encoder {v.ranker.dim}"
        )

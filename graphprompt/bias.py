"""Graph-structure attention bias: ``B[p, q] = c * (A + max(0, H + 1 - d) / (H + 1))`` between id tokens.

``d`` is the hop distance in the train graph (bounded BFS, :meth:`BipartiteGraph.hop_distances`) and ``A`` is
1 for a direct edge. With the defaults (H = 5, c = 6/11): same node 6/11, edge 1, 2 hops 4/11, 3 hops 3/11, 4
hops 2/11, 5 hops 1/11, farther 0. Word tokens get no bias. The bias is computed among the distinct nodes of a
prompt only, so it never needs more than the prompt's own ``(L, L)`` array.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from graphprompt.graph import BipartiteGraph, Edges, EdgesArg

MODES = ("hops", "ones")


@dataclass
class BiasConfig:
    """How the attention bias is formed; JSON-serialisable (it travels with the model's prompt config).

    ``mode="ones"`` is the ablation where every id–id pair gets 1 (graph structure ignored, token type kept);
    ``enabled=False`` gives an all-zero bias.
    """

    max_hops: int = 5
    c: float = 6 / 11
    enabled: bool = True
    mode: str = "hops"

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_hops, bool)
            or not isinstance(self.max_hops, int)
            or not 1 <= self.max_hops <= 120
        ):
            raise ValueError(f"BiasConfig.max_hops must be an int in [1, 120], got {self.max_hops!r}")
        if isinstance(self.c, bool) or not isinstance(self.c, int | float) or not math.isfinite(self.c):
            raise ValueError(f"BiasConfig.c must be a finite number, got {self.c!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"BiasConfig.enabled must be a bool, got {self.enabled!r}")
        if self.mode not in MODES:
            raise ValueError(f"BiasConfig.mode must be one of {MODES}, got {self.mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BiasConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"BiasConfig: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BiasConfig:
        return cls.from_dict(json.loads(text))


def relation_bias(
    dist: np.ndarray, direct: np.ndarray, cfg: BiasConfig | int | None = None, c: float | None = None
) -> np.ndarray:
    """Elementwise ``c * (direct + max(0, H + 1 - dist) / (H + 1))`` as float32.

    ``cfg`` is a :class:`BiasConfig`, or ``max_hops`` as an int (then ``c`` may be given too; default 6/11).
    The config's ``mode`` / ``enabled`` are applied by :func:`prompt_bias`, not here.
    """
    if isinstance(cfg, BiasConfig):
        if c is not None:
            raise ValueError("relation_bias: pass c inside the BiasConfig, not both")
        h, cc = cfg.max_hops, cfg.c
    else:
        h = 5 if cfg is None else int(cfg)
        cc = 6 / 11 if c is None else float(c)
        BiasConfig(max_hops=h, c=cc)  # validates
    dist = np.asarray(dist)
    direct = np.asarray(direct)
    if dist.shape != direct.shape:
        raise ValueError(f"dist {dist.shape} and direct {direct.shape} differ in shape")
    hop = np.maximum(0, h + 1 - dist.astype(np.float64)) / (h + 1)
    return (cc * (direct.astype(np.float64) + hop)).astype(np.float32)


def _check_node_ids(node_ids: np.ndarray) -> np.ndarray:
    a = np.asarray(node_ids)
    if a.ndim != 1:
        raise ValueError(f"node_ids must be 1-D (one entry per token position), got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"node_ids must be integers (global node id, or -1 for a word), got dtype {a.dtype}")
    if a.size and a.min() < -1:
        raise ValueError(f"node_ids may hold -1 for words and node ids >= 0, found {a.min()}")
    return a.astype(np.int64)


def prompt_bias(
    node_ids: np.ndarray,
    graph: BipartiteGraph,
    cfg: BiasConfig | None = None,
    extra_edges: Edges | None = None,
    removed_edges: Edges | None = None,
) -> np.ndarray:
    """float32 (L, L) bias for one prompt; ``node_ids[p]`` is a global node id, or -1 for a word token.

    Zero wherever either position is a word; repeated nodes share their distances (computed once per distinct
    node). ``extra_edges`` / ``removed_edges``: see :meth:`BipartiteGraph.hop_distances`.
    """
    extra = None if extra_edges is None else tuple(extra_edges)
    removed = None if removed_edges is None else tuple(removed_edges)
    return prompt_biases([node_ids], graph, cfg, extra, removed)[0]


def prompt_biases(
    node_id_lists: Sequence[np.ndarray],
    graph: BipartiteGraph,
    cfg: BiasConfig | None = None,
    extra_edges: EdgesArg = None,
    removed_edges: EdgesArg = None,
) -> list[np.ndarray]:
    """:func:`prompt_bias` for many prompts, sharing BFS work (``BipartiteGraph.hop_distances_many``).

    ``extra_edges`` / ``removed_edges``: one ``(users, items)`` tuple for all prompts, or a list with one
    entry (or None) per prompt.
    """
    cfg = cfg or BiasConfig()
    ids = [_check_node_ids(a) for a in node_id_lists]
    out = [np.zeros((a.size, a.size), dtype=np.float32) for a in ids]
    if not cfg.enabled:
        return out
    pos = [np.flatnonzero(a >= 0) for a in ids]
    if cfg.mode == "ones":
        for o, p in zip(out, pos, strict=True):
            o[np.ix_(p, p)] = 1.0
        return out
    uniq, inv = [], []
    for a, p in zip(ids, pos, strict=True):
        u, i = np.unique(a[p], return_inverse=True)
        uniq.append(u)
        inv.append(i)
    dists = graph.hop_distances_many(uniq, cfg.max_hops, extra_edges, removed_edges)
    for o, p, i, d in zip(out, pos, inv, dists, strict=True):
        if p.size:
            rel = relation_bias(d, d == 1, cfg)  # in a simple bipartite graph, distance 1 <=> direct edge
            o[np.ix_(p, p)] = rel[np.ix_(i, i)]
    return out

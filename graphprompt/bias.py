"""Graph-structure attention bias: ``B[p, q] = c * (A + max(0, H + 1 - d) / (H + 1))`` between id tokens.

``d`` is the hop distance in the train graph (bounded BFS, :meth:`BipartiteGraph.hop_distances`) and ``A`` is
1 for a direct edge. With the defaults (H = 5, c = 6/11): same node 6/11, edge 1, 2 hops 4/11, 3 hops 3/11, 4
hops 2/11, 5 hops 1/11, farther 0. Word tokens get no bias. The bias is computed among the distinct nodes of a
prompt only, so it never needs more than the prompt's own ``(L, L)`` array.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

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


def relation_bias(dist: np.ndarray, direct: np.ndarray, cfg: BiasConfig) -> np.ndarray:
    """Elementwise ``c * (direct + max(0, H + 1 - dist) / (H + 1))`` as float32, ``H`` and ``c`` from ``cfg``.

    The config's ``mode`` / ``enabled`` are applied by the prompt builder (graphprompt.prompts), not here.
    """
    h, cc = cfg.max_hops, cfg.c
    dist = np.asarray(dist)
    direct = np.asarray(direct)
    if dist.shape != direct.shape:
        raise ValueError(f"dist {dist.shape} and direct {direct.shape} differ in shape")
    hop = np.maximum(0, h + 1 - dist.astype(np.float64)) / (h + 1)
    return (cc * (direct.astype(np.float64) + hop)).astype(np.float32)

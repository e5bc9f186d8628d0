"""Pre-training documents ("crowd contextual prompts", DESIGN §1): which prompts one epoch of each stream
holds.

* collaborative stream (collaborative id tables): ``user_u has interacted with`` → shuffled items (item
head) and
  ``user_u shares items with`` → its top second-order users (user head);
* content stream (content id tables): item fields (title, brand, categories, description), reviews, and
  second-order groups of items sharing a brand / category, split into groups of ``group_size`` (word head).

Distances for the bias are computed once per node set with one batched bounded BFS (``hop_distances_many``)
and
cached: a collaborative prompt's node set is fixed per user, only its order changes between epochs.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from graphprompt.graph import BipartiteGraph
from graphprompt.prompts import CONTENT_TEMPLATES, EncodedPrompt, PromptBuilder

MAX_GROUPS_PER_VALUE = 4  # per epoch, so one huge category does not swamp the content stream


class PretrainData:
    def __init__(
        self,
        builder: PromptBuilder,
        graph: BipartiteGraph,
        item_text: dict[str, list[str]],
        reviews: dict[tuple[int, int], str] | None = None,
        *,
        neighbour_prompts: bool = True,
        group_prompts: bool = True,
    ):
        self.b, self.g = builder, graph
        self.fields = {f: v for f, v in item_text.items() if f in CONTENT_TEMPLATES}
        self.reviews = reviews or {}
        self.neighbour_prompts = neighbour_prompts
        self.group_prompts = group_prompts
        self.users = np.flatnonzero(graph.user_degree() > 0)
        self._co: dict[int, np.ndarray] = {}
        self._dist: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        # second-order groups: (field, value) -> items, values shared by at least two items
        self.groups: list[tuple[str, str, np.ndarray]] = []
        for f in ("brand", "categories"):
            if f not in item_text:
                continue
            by_value: dict[str, list[int]] = defaultdict(list)
            for i, v in enumerate(item_text[f]):
                if v:
                    by_value[v].append(i)
            self.groups += [(f, v, np.array(ix)) for v, ix in sorted(by_value.items()) if len(ix) >= 2]

    def co_users(self, u: int) -> np.ndarray:
        hit = self._co.get(u)
        if hit is None:
            hit = self.g.neighbourhood(
                u,
                n_users=max(self.b.cfg.n_co_users, 1),
                n_items=0,
                item_norm=0.0,  # two-hop items unused
            ).co_users
            self._co[u] = hit
        return hit

    def _user_distances(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per user: distances among {u} ∪ train items ∪ top co-users, one batched BFS for all users."""
        if self._dist is None:
            self._dist = {}
            if self.b.cfg.bias.enabled:
                nu = self.g.n_users
                sets = [
                    np.unique(np.concatenate([[u], self.g.user_items(u) + nu, self.co_users(int(u))]))
                    for u in self.users
                ]
                dists = self.g.hop_distances_many(sets, self.b.cfg.bias.max_hops)
                self._dist = {int(u): (s, d) for u, s, d in zip(self.users, sets, dists, strict=True)}
        return self._dist

    def collaborative(self, rng: np.random.Generator) -> list[EncodedPrompt]:
        dist = self._user_distances()
        out = []
        for u in self.users:
            u = int(u)
            out.append(self.b.collaborative(u, rng.permutation(self.g.user_items(u)), distances=dist.get(u)))
            if self.neighbour_prompts:
                co = self.co_users(u)
                if len(co):
                    out.append(self.b.neighbour(u, co, distances=dist.get(u)))
        return out

    def content(self, rng: np.random.Generator) -> list[EncodedPrompt]:
        """One random non-empty field per item, every review, and the group prompts of this epoch."""
        out = []
        names = sorted(self.fields)
        for i in range(self.g.n_items):
            avail = [f for f in names if self.fields[f][i].strip()]
            if avail:
                f = avail[rng.integers(len(avail))]
                out.append(self.b.content(i, f, self.fields[f][i]))
        for (u, i), text in sorted(self.reviews.items()):
            if text.strip():
                out.append(self.b.review(u, i, text))
        if self.group_prompts:
            out += self._groups(rng)
        return out

    def _groups(self, rng: np.random.Generator) -> list[EncodedPrompt]:
        size = self.b.cfg.group_size
        chunks: list[tuple[str, str, np.ndarray]] = []
        for f, v, items in self.groups:
            perm = rng.permutation(items)
            n_chunks = min(MAX_GROUPS_PER_VALUE, -(-len(perm) // size))
            for c in np.array_split(perm[: n_chunks * size], n_chunks):
                if len(c) >= 2:
                    chunks.append((f, v, c))
        if not chunks:
            return []
        dists = None
        if self.b.cfg.bias.enabled:
            sets = [np.unique(c) + self.g.n_users for _, _, c in chunks]
            dists = self.g.hop_distances_many(sets, self.b.cfg.bias.max_hops)
            dists = list(zip(sets, dists, strict=True))
        return [
            self.b.group(c, f, v, distances=None if dists is None else dists[k])
            for k, (f, v, c) in enumerate(chunks)
        ]

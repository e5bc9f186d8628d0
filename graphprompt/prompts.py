"""Prompt templates: ONE builder used by training (every prompt kind) and by the service (predictive prompts).

Every built prompt is an :class:`EncodedPrompt`: token ids in the unified space of
:mod:`graphprompt.tokenizer`, the
graph node id per position (-1 for words) and the graph-bias matrix among its positions
(``graphprompt.bias``; zero
wherever either side is a word). Language-model prompts also carry a *main* part (the tokens the loss
covers) and the
head the loss uses (``item`` / ``user`` / ``word``; never words and ids in one softmax).

Kinds (DESIGN.md §1):

* predictive   ``user_u has interacted with item_a item_b …. Users with shared items: user_v …. Items they
also
  chose: item_x …. user_u will interact with`` — the last position's hidden state is the user vector;
* collaborative ``user_u has interacted with`` → `` item_a item_b …`` (item head);
* content      ``The title of item_i is:`` → `` {title}`` (also brand, categories, description; reviews)
(word head);
* group        ``These items item_a item_b … have the same brand:`` → `` {brand}`` (word head);
* neighbour    ``user_u shares items with`` → `` user_v user_w …`` (user head) — second-order users, so the
  hop-distance bias among them is informative.

Padding (``collate``): **left** padding, so the last column is every row's last real token and the user
vector is
simply ``hidden[:, -1]`` (no gather in the exported graph). Position ids are not passed: the model derives
them from
the mask as ``cumsum(attention_mask) - 1`` (clamped at 0), so a prompt gets the same positions whatever its
padding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from graphprompt.bias import BiasConfig, relation_bias
from graphprompt.graph import BipartiteGraph, Neighbourhood
from graphprompt.tokenizer import RecTokenizer

HEADS = ("item", "user", "word")
HISTORY_ORDERS = ("shuffled", "time")
IGNORE = -100  # label of positions outside the main part

CONTENT_TEMPLATES = {
    "title": "The title of",
    "brand": "The brand of",
    "categories": "The categories of",
    "description": "The description of",
}


# Values for a saved prompt_config.json written before the field existed: how those models were trained
# (two-hop items ranked by raw counts, no strength row, no row without the graph bias). Not defaults: those
# are PromptConfig's own.
FIELDS_ADDED_LATER = {"two_hop_norm": 0.0, "candidate_strength": 0.0, "strength_without_bias": False}


@dataclass
class PromptConfig:
    """Everything that shapes a prompt; saved as ``prompt_config.json`` next to the model."""

    max_history: int = 50  # history items in a predictive prompt (the last ones of the given order)
    n_co_users: int = 10  # second-order users in a predictive prompt (0 = none)
    n_two_hop_items: int = 50  # two-hop items in a predictive prompt (0 = none); the candidates
    # rank two-hop items by co-occurrence / degree**a (0 = raw counts, popular first); 30 items at a = 0.5
    # beat 10 raw ones on office validation (the sweep: benchmarks/results/sweep-amazon-office.md at 3a2f2e9)
    two_hop_norm: float = 0.5
    # > 0: the predicting (last) position's bias row holds candidate_strength * w / max(w) at the two-hop
    # items, w their ranking score above, so the position that scores the items sees how strongly each
    # candidate ties to the user's history (hop distances alone say only "3 hops"); 0 = no such row
    candidate_strength: float = 1.0
    # With the graph bias off (bias.enabled=False) the strength row is still written, for the candidate prior
    # to read, and the model leaves the bias out of attention (ModelConfig.attend_graph_bias): "no graph bias"
    # then takes graph relations out of attention and nothing else. Set by the run, not a recipe choice;
    # False only in prompt configs saved before the row was decoupled (their no-bias models saw zeros).
    strength_without_bias: bool = True
    # the order a predictive prompt lists the user's history in: "shuffled" (fine-tuning shuffles it, so the
    # model learns no order; scoring uses a fixed random order) or "time" (oldest first, in training, scoring
    # and serving alike, so the newest events sit next to the predicting position; needs the time order)
    history_order: str = "shuffled"
    use_user_token: bool = True  # put user_<u> in prompts (False: the anonymous/cold-start form everywhere)
    group_size: int = 10  # items per second-order group prompt; bigger groups are split
    max_text_tokens: int = 48  # cap on the main part of a content prompt
    max_main_items: int = 50  # cap on the main part of a collaborative prompt
    bias: BiasConfig = field(default_factory=BiasConfig)
    tokenizer: dict = field(default_factory=dict)  # id-token counts (RecTokenizer.counts())
    padding_side: str = "left"  # fixed: see the module docstring

    def __post_init__(self) -> None:
        if self.history_order not in HISTORY_ORDERS:
            raise ValueError(f"history_order must be one of {HISTORY_ORDERS}, got {self.history_order!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PromptConfig:
        """Fields missing from ``d`` take today's defaults (a partial override, as TrainConfig.prompt)."""
        d = dict(d)
        bias = BiasConfig(**d.pop("bias", {}))
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown prompt config fields: {sorted(unknown)}")
        if d.get("padding_side", "left") != "left":
            raise ValueError("only left padding is supported (the user vector is the last column)")
        return cls(bias=bias, **d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_saved(cls, d: dict) -> PromptConfig:
        """A saved ``prompt_config.json``: a field it lacks was added after it was written, so it takes the
        value that reproduces how that model was trained, not today's default."""
        return cls.from_dict({**FIELDS_ADDED_LATER, **d})

    @classmethod
    def load(cls, path: str | Path) -> PromptConfig:
        return cls.from_saved(json.loads(Path(path).read_text()))


@dataclass
class EncodedPrompt:
    input_ids: np.ndarray  # int64 [L]
    node_ids: np.ndarray  # int64 [L], -1 for words
    bias: np.ndarray  # float32 [L, L]
    n_prompt: int  # positions before the main part (== L when there is none)
    head: str | None = None  # vocabulary of the main part's loss
    strength: np.ndarray | None = None  # float32 [L]: the last bias row's candidate strengths (predictive)

    def __len__(self) -> int:
        return len(self.input_ids)


class PromptBuilder:
    def __init__(self, tokenizer: RecTokenizer, graph: BipartiteGraph, cfg: PromptConfig | None = None):
        if tokenizer.n_users != graph.n_users or tokenizer.n_items != graph.n_items:
            raise ValueError(
                f"tokenizer has {tokenizer.n_users} users / {tokenizer.n_items} items but the graph has "
                f"{graph.n_users} / {graph.n_items}"
            )
        self.tok = tokenizer
        self.graph = graph
        self.cfg = cfg or PromptConfig()
        if not self.cfg.tokenizer:
            self.cfg.tokenizer = tokenizer.counts()

    @property
    def wants_neighbourhood(self) -> bool:
        return self.cfg.n_co_users > 0 or self.cfg.n_two_hop_items > 0

    def neighbourhood(self, user: int | None, items: np.ndarray | None = None):
        """The neighbourhood a predictive prompt carries (None when the config asks for none): the one place
        that turns the prompt config into a graph query, for training, export checks and serving alike."""
        if not self.wants_neighbourhood:
            return None
        c = self.cfg
        return self.graph.neighbourhood(
            user, items, n_users=c.n_co_users, n_items=c.n_two_hop_items, item_norm=c.two_hop_norm
        )

    # ------------------------------------------------------------------ pieces
    def _t(self, text: str) -> np.ndarray:
        return self.tok.encode_text(text, cache=True)

    def _users(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.tok.n_users):
            raise ValueError(f"user index out of range [0, {self.tok.n_users})")
        return users + self.tok.user_offset

    def _items(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= self.tok.n_items):
            raise ValueError(f"item index out of range [0, {self.tok.n_items})")
        return items + self.tok.item_offset

    def _finish(
        self,
        prompt: list[np.ndarray],
        main: list[np.ndarray] | None = None,
        head: str | None = None,
        *,
        distances: tuple[np.ndarray, np.ndarray] | None = None,
        removed_edges: tuple[np.ndarray, np.ndarray] | None = None,
        extra_edges: tuple[np.ndarray, np.ndarray] | None = None,
        with_bias: bool = True,
        strength: np.ndarray | None = None,
    ) -> EncodedPrompt:
        p = np.concatenate(prompt)
        ids = p if not main else np.concatenate([p, *main])
        nodes = self.tok.node_ids(ids)
        out = EncodedPrompt(ids, nodes, np.zeros((len(ids), len(ids)), np.float32), len(p), head, strength)
        if with_bias:
            out = self.with_bias(
                out, distances=distances, removed_edges=removed_edges, extra_edges=extra_edges
            )
        return out

    @property
    def writes_strength(self) -> bool:
        """Whether predictive prompts carry the candidate strengths in their last bias row (the candidate
        prior's input): with the graph bias on (not the ``ones`` ablation), and with it off where the model
        leaves the matrix out of attention (``strength_without_bias``)."""
        b = self.cfg.bias
        return b.mode != "ones" and (b.enabled or self.cfg.strength_without_bias)

    def with_bias(
        self,
        prompt: EncodedPrompt,
        *,
        distances: tuple[np.ndarray, np.ndarray] | None = None,
        removed_edges: tuple[np.ndarray, np.ndarray] | None = None,
        extra_edges: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> EncodedPrompt:
        """``prompt`` with its graph bias: hop distances among its nodes (:meth:`bias`), and the candidate
        strengths in the last row when the prompt has them (not in the ``ones`` ablation; with the bias off
        only where ``strength_without_bias`` says the model ignores the matrix in attention)."""
        bias = self.bias(
            prompt.node_ids, distances=distances, removed_edges=removed_edges, extra_edges=extra_edges
        )
        if self.writes_strength and prompt.strength is not None:
            bias[-1] += prompt.strength
        return replace(prompt, bias=bias)

    def distances(
        self,
        nodes: np.ndarray,
        removed_edges: tuple[np.ndarray, np.ndarray] | None = None,
        extra_edges: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct node ids, their int8 hop-distance matrix) on the train graph, edited by the
        edges."""
        uniq = np.unique(nodes[nodes >= 0])
        dist = self.graph.hop_distances(
            uniq, self.cfg.bias.max_hops, extra_edges=extra_edges, removed_edges=removed_edges
        )
        return uniq, dist

    def bias(
        self,
        nodes: np.ndarray,
        *,
        distances: tuple[np.ndarray, np.ndarray] | None = None,
        removed_edges: tuple[np.ndarray, np.ndarray] | None = None,
        extra_edges: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """[L, L] float32 graph bias of a prompt's node ids: ``R(node p, node q)`` where both are nodes,
        else 0.

        Distances are computed among the prompt's *distinct* nodes only (bounded BFS in ``graph``), or taken
        from
        ``distances`` (a superset's ``(uniq, dist)``, e.g. cached by training: reordering a prompt only
        permutes
        its bias, so one BFS serves every shuffle of the same node set)."""
        length = len(nodes)
        out = np.zeros((length, length), dtype=np.float32)
        cfg = self.cfg.bias
        pos = np.flatnonzero(nodes >= 0)
        if not cfg.enabled or pos.size == 0:
            return out
        if distances is None and np.all(nodes[pos] == nodes[pos[0]]):
            distances = (nodes[pos[:1]], np.zeros((1, 1), dtype=np.int8))  # one node: no BFS needed
        elif distances is None:
            distances = self.distances(nodes[pos], removed_edges, extra_edges)
        uniq, dist = distances
        idx = np.searchsorted(uniq, nodes[pos])
        if np.any(idx >= len(uniq)) or np.any(uniq[np.minimum(idx, len(uniq) - 1)] != nodes[pos]):
            raise ValueError("cached distances do not cover every node of the prompt")
        d = dist[np.ix_(idx, idx)]
        # mode "ones" (ablation): the same constant wherever both tokens are nodes
        ones = cfg.mode == "ones"
        out[np.ix_(pos, pos)] = np.ones(d.shape, np.float32) if ones else relation_bias(d, d == 1, cfg)
        return out

    def _user_or_none(self, user: int | None) -> int | None:
        return user if (user is not None and self.cfg.use_user_token) else None

    # ------------------------------------------------------------------ predictive (training + serving)
    def predictive(
        self,
        user: int | None,
        history: np.ndarray,
        neighbourhood: Neighbourhood | None = None,
        *,
        removed_edges: tuple[np.ndarray, np.ndarray] | None = None,
        extra_edges: tuple[np.ndarray, np.ndarray] | None = None,
        distances: tuple[np.ndarray, np.ndarray] | None = None,
        with_bias: bool = True,
    ) -> EncodedPrompt:
        """The personalised predictive prompt; its last position scores the items.

        ``history`` is in the caller's order (oldest first at serving time; shuffled at training time) and
        only the
        last ``max_history`` items are kept. ``neighbourhood`` (from ``graph.neighbourhood``) adds
        second-order users
        and two-hop items. ``removed_edges`` / ``extra_edges`` change the graph the bias is computed on
        (training
        hides the held-out edges of the user; serving adds live edges); ``distances`` reuses a cached BFS
        result
        (see :meth:`bias`); ``with_bias=False`` skips the bias (tokens and node ids only).
        """
        cfg = self.cfg
        history = (
            np.asarray(history, dtype=np.int64)[-cfg.max_history :] if cfg.max_history > 0 else history[:0]
        )
        user = self._user_or_none(user)
        parts: list[np.ndarray] = []
        strength = None  # (first two-hop position, strengths)
        if user is None:
            parts += [self._t("A user has interacted with")]
        else:
            parts += [self._users(np.array([user])), self._t(" has interacted with")]
        parts.append(self._items(history))
        if neighbourhood is not None:
            co = np.asarray(neighbourhood.co_users, dtype=np.int64)[: cfg.n_co_users]
            if user is not None:
                co = co[co != user]
            if len(co):
                parts += [self._t(". Users with shared items:"), self._users(co)]
            two = np.asarray(neighbourhood.two_hop_items, dtype=np.int64)[: cfg.n_two_hop_items]
            if len(two):
                parts += [self._t(". Items they also chose:"), self._items(two)]
                if cfg.candidate_strength > 0:
                    w = np.asarray(neighbourhood.two_hop_weight, dtype=np.float32)[: len(two)]
                    start = sum(len(x) for x in parts) - len(two)
                    strength = (start, cfg.candidate_strength * w / max(float(w.max()), 1e-12))
        if user is None:
            parts.append(self._t(". The user will interact with"))
        else:
            parts += [self._t("."), self._users(np.array([user])), self._t(" will interact with")]
        row = None
        if strength is not None:
            row = np.zeros(sum(len(x) for x in parts), np.float32)
            row[strength[0] : strength[0] + len(strength[1])] = strength[1]
        return self._finish(
            parts,
            distances=distances,
            removed_edges=removed_edges,
            extra_edges=extra_edges,
            with_bias=with_bias,
            strength=row,
        )

    # ------------------------------------------------------------------ pre-training kinds
    def collaborative(
        self, user: int, items: np.ndarray, distances: tuple[np.ndarray, np.ndarray] | None = None
    ) -> EncodedPrompt:
        """``user_u has interacted with`` → `` item_a item_b …`` (the caller shuffles ``items`` every
        epoch)."""
        items = np.asarray(items, dtype=np.int64)[: self.cfg.max_main_items]
        if len(items) == 0:
            raise ValueError(f"user {user} has no items for a collaborative prompt")
        u = self._user_or_none(user)
        prompt = (
            [self._t("A user has interacted with")]
            if u is None
            else [
                self._users(np.array([u])),
                self._t(" has interacted with"),
            ]
        )
        return self._finish(prompt, [self._items(items)], "item", distances=distances)

    def content(self, item: int, field_name: str, text: str) -> EncodedPrompt:
        """``The {field} of item_i is:`` → `` {text}`` (word head; text capped at ``max_text_tokens``)."""
        lead = CONTENT_TEMPLATES.get(field_name, f"The {field_name} of")
        main = self._text_main(text)
        return self._finish([self._t(lead), self._items(np.array([item])), self._t(" is:")], [main], "word")

    def review(self, user: int, item: int, text: str) -> EncodedPrompt:
        """``user_u wrote the following review for item_i:`` → `` {text}``."""
        prompt = [
            self._users(np.array([user])),
            self._t(" wrote the following review for"),
            self._items(np.array([item])),
            self._t(":"),
        ]
        return self._finish(prompt, [self._text_main(text)], "word")

    def group(
        self,
        items: np.ndarray,
        field_name: str,
        value: str,
        distances: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> EncodedPrompt:
        """``These items item_a item_b … have the same {field}:`` → `` {value}`` (one group of <=
        group_size)."""
        items = np.asarray(items, dtype=np.int64)
        if not 2 <= len(items) <= self.cfg.group_size:
            raise ValueError(f"a group prompt needs 2..{self.cfg.group_size} items, got {len(items)}")
        noun = {"categories": "category"}.get(field_name, field_name)
        prompt = [self._t("These items"), self._items(items), self._t(f" have the same {noun}:")]
        return self._finish(prompt, [self._text_main(value)], "word", distances=distances)

    def neighbour(
        self, user: int, co_users: np.ndarray, distances: tuple[np.ndarray, np.ndarray] | None = None
    ) -> EncodedPrompt:
        """``user_u shares items with`` → `` user_v user_w …`` (user head; co-users ranked by shared
        items)."""
        co = np.asarray(co_users, dtype=np.int64)
        co = co[co != user]
        if len(co) == 0:
            raise ValueError(f"user {user} has no second-order users")
        prompt = [self._users(np.array([user])), self._t(" shares items with")]
        return self._finish(prompt, [self._users(co)], "user", distances=distances)

    def _text_main(self, text: str) -> np.ndarray:
        text = " " + " ".join(str(text).split())
        ids = self._t_main(text)[: self.cfg.max_text_tokens]
        if len(ids) == 0:
            raise ValueError("empty text for a content prompt")
        return ids

    def _t_main(self, text: str) -> np.ndarray:
        return self.tok.encode_text(text)

    # ------------------------------------------------------------------ batching
    @staticmethod
    def collate(prompts: list[EncodedPrompt]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Left-pad to the longest prompt: ``input_ids`` int64 [B, L] (pad id 0), ``attention_mask`` int64
        [B, L]
        (1 = real token), ``graph_bias`` float32 [B, L, L] (0 on padding)."""
        if not prompts:
            raise ValueError("collate needs at least one prompt")
        b, length = len(prompts), max(len(p) for p in prompts)
        ids = np.zeros((b, length), dtype=np.int64)
        mask = np.zeros((b, length), dtype=np.int64)
        bias = np.zeros((b, length, length), dtype=np.float32)
        for r, p in enumerate(prompts):
            n = len(p)
            ids[r, length - n :] = p.input_ids
            mask[r, length - n :] = 1
            bias[r, length - n :, length - n :] = p.bias
        return ids, mask, bias

    def history_labels(self, prompts: list[EncodedPrompt], after: list[int]) -> np.ndarray:
        """Next-item labels [B, L] of predictive prompts, aligned with :meth:`collate`'s layout: at each
        history item (the prompt's first run of items) the item index of the next one, at the last the item
        ``after[r]`` (the event that followed the history; < 0 for none), ``IGNORE`` elsewhere. With a
        history in time order this is SASRec's objective, on the same causal attention."""
        b, length = len(prompts), max(len(p) for p in prompts)
        out = np.full((b, length), IGNORE, dtype=np.int64)
        first_item = self.graph.n_users
        for r, p in enumerate(prompts):
            is_item = p.node_ids >= first_item
            if not is_item.any():
                continue
            s0 = int(np.argmax(is_item))
            ends = np.flatnonzero(~is_item[s0:])  # the history ends at the first word or user after it
            run = int(ends[0]) if ends.size else len(p) - s0
            items = p.node_ids[s0 : s0 + run] - first_item
            start = length - len(p) + s0
            out[r, start : start + run - 1] = items[1:]
            if after[r] >= 0:
                out[r, start + run - 1] = after[r]
        return out

    @staticmethod
    def labels(prompts: list[EncodedPrompt], offsets: dict[str, int]) -> np.ndarray:
        """Next-token labels [B, L] aligned with :meth:`collate`'s layout: ``labels[r, t]`` is the
        head-local index
        of the token at ``t + 1`` when that token is in the main part, else ``IGNORE``. ``offsets`` maps a
        head to
        the first token id of its vocabulary (word 0, user V_words, item V_words + U)."""
        b, length = len(prompts), max(len(p) for p in prompts)
        out = np.full((b, length), IGNORE, dtype=np.int64)
        for r, p in enumerate(prompts):
            if p.head is None or p.n_prompt >= len(p):
                continue
            start = length - len(p)
            main = p.input_ids[p.n_prompt :] - offsets[p.head]
            out[r, start + p.n_prompt - 1 : length - 1] = main
        return out

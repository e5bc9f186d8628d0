"""Fine-tuning on personalised predictive prompts, and the scoring function used for validation and test.

Per user and epoch a random ``target_frac`` of the train items (at least one) is held out as targets and the
rest,
shuffled, form the prompt's history; the neighbourhood (co-users, two-hop items) is computed from the visible
history only and the bias on the train graph *minus the user's held-out edges*, exactly as the model will
see a
user at test time (whose test items are not in the graph). The last hidden state scores all items; the loss
is the
multinomial ``-Σ_targets log softmax(E_item · h)``.

The held-out split of a user is drawn from ``target_variants`` fixed variants (epoch e uses variant e mod
K): the
bounded BFS with per-user edge removals is the expensive part of a prompt, and a variant's distances are
computed
once and reused, since shuffling a history only permutes its bias matrix.

With ``PromptConfig.history_order == "time"`` histories keep the user's time order (oldest first) instead of
being shuffled, and a ``next_targets`` share of the held-out splits are *time cuts*: the targets are the
user's newest train events (a random number of them, half the history on average) and the visible history
is what came before, so the model learns to predict what follows a history, as a live service asks it to.
A cut's targets are its future events only, even when ``all_train_targets`` is on.
"""

from __future__ import annotations

import numpy as np
import torch

from graphprompt.graph import BipartiteGraph
from graphprompt.prompts import EncodedPrompt, PromptBuilder


class PredictiveData:
    def __init__(
        self,
        builder: PromptBuilder,
        graph: BipartiteGraph,
        seed: int,
        target_frac: float = 0.5,
        target_variants: int = 4,
        all_train_targets: bool = False,
        next_targets: float = 0.0,
    ):
        if not 0 < target_frac < 1:
            raise ValueError(f"target_frac must be in (0, 1), got {target_frac}")
        if not 0 <= next_targets <= 1:
            raise ValueError(f"next_targets must be in [0, 1], got {next_targets}")
        self.in_time = builder.cfg.history_order == "time"
        if (self.in_time or next_targets > 0) and not graph.has_time:
            raise ValueError(
                "history_order='time' and next_targets need the data's time order, which this dataset lacks "
                "(prepared before it was kept): prepare it again with `edgerec data prepare`"
            )
        if next_targets > 0 and not self.in_time:
            raise ValueError("next_targets (time cuts) needs prompt.history_order='time'")
        self.next_targets = next_targets
        self.b, self.g = builder, graph
        self.seed, self.frac, self.k = seed, target_frac, max(1, target_variants)
        self.all_train_targets = all_train_targets
        self.users = np.flatnonzero(graph.user_degree() > 0)
        self._variants: dict[tuple[int, int], tuple] = {}
        self._eval: dict[int, EncodedPrompt] = {}

    def history(self, u: int) -> np.ndarray:
        """User ``u``'s train items in the order a prompt lists them when all are shown."""
        if self.in_time:
            return self.g.user_items_in_time(u)
        return np.random.default_rng([self.seed, 11, u]).permutation(self.g.user_items(u))

    def variant(self, u: int, v: int) -> tuple:
        """(visible items, target items, neighbourhood, distances, is a time cut) of user ``u``'s ``v``-th
        held-out split."""
        key = (u, v)
        hit = self._variants.get(key)
        if hit is not None:
            return hit
        rng = np.random.default_rng([self.seed, 7, u, v])
        n = len(self.g.user_items(u))
        n_t = max(1, int(round(self.frac * n)))
        cut = self.next_targets > 0 and n > 1 and rng.random() < self.next_targets
        if cut:
            # a random number of newest events, uniform in [1, 2 n_t - 1]: half the history on average
            n_t = int(rng.integers(1, 2 * n_t))
        if n > 1:
            n_t = min(n_t, n - 1)  # keep at least one visible item
        if cut:
            items = self.g.user_items_in_time(u)
            targets, visible = items[n - n_t :], items[: n - n_t]
        else:
            items = rng.permutation(self.g.user_items(u))
            targets, visible = items[:n_t], items[n_t:]
            if self.in_time:
                order = self.g.user_items_in_time(u)
                visible = order[np.isin(order, visible)]
        # The prompt keeps at most max_history items; fix that subset per variant so the cached distances
        # below cover every node of every shuffled prompt built from it (in time order: the newest).
        cap = self.b.cfg.max_history
        if cap > 0 and len(visible) > cap:
            visible = visible[-cap:] if self.in_time else visible[:cap]
        nbr = self.b.neighbourhood(u, visible)
        dist = None
        if self.b.cfg.bias.enabled:
            probe = self.b.predictive(u, visible, nbr, with_bias=False)
            dist = self.b.distances(probe.node_ids, removed_edges=(np.full(len(targets), u), targets))
        hit = (visible, targets, nbr, dist, cut)
        self._variants[key] = hit
        return hit

    def epoch(
        self, epoch: int, rng: np.random.Generator
    ) -> tuple[list[EncodedPrompt], list[np.ndarray], list[int]]:
        """One epoch's (prompts, targets, after): ``after`` is per prompt the event that followed its
        history (a time cut's first target; -1 for none), the last label of
        :meth:`PromptBuilder.history_labels`."""
        prompts, targets, after = [], [], []
        v = epoch % self.k
        for u in self.users:
            visible, tgt, nbr, dist, cut = self.variant(int(u), v)
            hist = visible if self.in_time else rng.permutation(visible)
            prompts.append(self.b.predictive(int(u), hist, nbr, distances=dist))
            targets.append(self.g.user_items(int(u)) if self.all_train_targets and not cut else tgt)
            after.append(int(tgt[0]) if cut and len(tgt) else -1)
        return prompts, targets, after

    def eval_prompt(self, u: int) -> EncodedPrompt:
        """One user's scoring prompt (see :meth:`eval_prompts`)."""
        return self.eval_prompts(np.array([u]))[0]

    def eval_prompts(self, users: np.ndarray) -> list[EncodedPrompt]:
        """The prompts users are scored with: all train items (:meth:`history`), full train graph.

        Built once per user and cached; the distances of all new prompts come from one batched BFS."""
        new = [int(u) for u in users if int(u) not in self._eval]
        if new:
            raw = []
            for u in new:
                items = self.history(u)
                raw.append((u, items, self.b.neighbourhood(u, items)))
            probes = [self.b.predictive(u, it, nb, with_bias=False) for u, it, nb in raw]
            dists: list = [None] * len(new)
            if self.b.cfg.bias.enabled:
                sets = [np.unique(p.node_ids[p.node_ids >= 0]) for p in probes]
                dists = list(
                    zip(sets, self.g.hop_distances_many(sets, self.b.cfg.bias.max_hops), strict=True)
                )
            for (u, it, nb), dist in zip(raw, dists, strict=True):
                self._eval[u] = self.b.predictive(u, it, nb, distances=dist)
        return [self._eval[int(u)] for u in users]


def targets_matrix(targets: list[np.ndarray], n_items: int, device: torch.device) -> torch.Tensor:
    t = torch.zeros((len(targets), n_items), dtype=torch.float32)
    for r, items in enumerate(targets):
        t[r, torch.as_tensor(items, dtype=torch.long)] = 1.0
    return t.to(device)


def to_tensors(batch: tuple[np.ndarray, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a).to(device) for a in batch)


@torch.no_grad()
def score_users(
    model,
    data: PredictiveData,
    users: np.ndarray,
    device: torch.device,
    batch: int = 256,
    item_item=None,
):
    """[len(users), I] float32 scores from the predictive prompts (length-sorted sub-batches, original
    order), plus the ranker's item-item term over each user's train items when ``item_item`` is given
    (``inference.item_item.ItemItem``, the same boosts the served version adds)."""
    model.eval()
    prompts = data.eval_prompts(users)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out = np.zeros((len(users), model.cfg.n_items), dtype=np.float32)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        ids, mask, bias = to_tensors(PromptBuilder.collate([prompts[i] for i in idx]), device)
        vec, candidates = model.encode(ids, mask, bias)
        out[idx] = model.item_scores(vec, candidates, ids).float().cpu().numpy()
        if item_item is not None and item_item.active:
            hist = [data.g.user_items_in_time(int(users[i])) for i in idx]  # newest last (transitions)
            for r, (items, boost) in zip(idx, item_item.boosts(vec.float().cpu().numpy(), hist), strict=True):
                out[r, items] += boost
    return out

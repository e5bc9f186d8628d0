"""The request path: cache lookup → neighbourhood → prompt + bias → micro-batched encoder → FAISS → filter.

Routes call :meth:`Recommender.recommend`. The neighbourhood (on a miss) and the prompt are built on the event
loop: that is Python/numpy work holding the GIL anyway, and in a thread it would only add GIL hand-offs (the
cached hop distances keep it to ~0.2 ms). The encoder and FAISS search, native code that releases the GIL, run
in the model's micro-batch worker thread, in parallel with HTTP handling on the loop. Fallback reasons, in
the order a client should read them:

- ``popularity``: nothing known about the user (no train history, no live history, no ``recent_items``);
- ``cold_start_context``: a user the model has no token for, answered from a prompt of the given/live items;
- ``cache_unavailable``: Redis could not be read; answered from the in-memory graph snapshot without live
  history."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from graphprompt.prompts import EncodedPrompt
from inference.ranker import Boost
from service.batcher import MicroBatcher
from service.cache import Cache, Lookup, RedisUnavailable
from service.cache_entry import Entry
from service.catalogue import Resolved, resolve, split_exclusions
from service.config import Settings
from service.metrics import Metrics
from service.prompt_pool import PromptPool
from service.serving import ServingModel, set_search_threads
from service.swap_warmup import SwapWarmup

log = logging.getLogger("edgerec.recommender")

POPULARITY = "popularity"
COLD_START = "cold_start_context"
CACHE_UNAVAILABLE = "cache_unavailable"
FALLBACK_ORDER = (POPULARITY, COLD_START, CACHE_UNAVAILABLE)

_EMPTY = np.zeros(0, dtype=np.int64)
_NOTHING = Resolved(_EMPTY, _EMPTY, _EMPTY, _EMPTY, [])


class UnknownItemsError(ValueError):
    def __init__(self, field_name: str, ids: Sequence[str]) -> None:
        self.field_name = field_name
        self.ids = list(ids)
        shown = ", ".join(repr(i) for i in self.ids[:20]) + (" ..." if len(self.ids) > 20 else "")
        super().__init__(f"{field_name}: {len(self.ids)} unknown item id(s) for this model: {shown}")


@dataclass
class Recommendation:
    user_id: str
    version: str
    item_idx: np.ndarray  # int64, best first
    scores: np.ndarray  # float32
    reasons: list[str] = field(default_factory=list)
    known_user: bool = False
    history: np.ndarray = field(default_factory=lambda: _EMPTY)  # train + live + recent, oldest first
    co_users: np.ndarray = field(default_factory=lambda: _EMPTY)  # the prompt's second-order users

    @property
    def fallback(self) -> str | None:
        return next((r for r in FALLBACK_ORDER if r in self.reasons), None)


@dataclass
class _Job:
    """One micro-batch job: a prompt to encode, or a cached user vector (and its boosts) to search with."""

    prompt: EncodedPrompt | None
    vector: np.ndarray | None
    boost: Boost | None
    k: int
    exclude: np.ndarray
    history: np.ndarray  # the prompt's history: its items are never boosted


# (item indices, scores) best first, then the user vector and candidate boosts the ranking used
_Ranked = tuple[np.ndarray, np.ndarray, np.ndarray, Boost | None]


@dataclass(frozen=True)
class History:
    """A user's items as one request sees them (item indices, oldest first, each without repeats)."""

    train: np.ndarray  # in the version's train graph
    live: np.ndarray  # acknowledged since (Redis), known to this version
    recent: np.ndarray  # given with this request (``recent_items``)

    # Computed once per request (cached_property writes the instance dict, which a frozen dataclass allows).
    @cached_property
    def stored(self) -> np.ndarray:
        """Train + live: what the cache entry describes."""
        return dedup_keep_last(np.concatenate([self.train, self.live]))

    @cached_property
    def all(self) -> np.ndarray:
        """Stored + recent: what the prompt lists and the answer excludes."""
        return dedup_keep_last(np.concatenate([self.stored, self.recent]))


def dedup_keep_last(x: np.ndarray) -> np.ndarray:
    """Unique items ordered by their last occurrence (so the newest interactions end the prompt)."""
    if x.size == 0:
        return x.astype(np.int64)
    rev = x[::-1]
    _, first = np.unique(rev, return_index=True)
    return rev[np.sort(first)][::-1].astype(np.int64)


def _co_users(entry: Entry) -> np.ndarray:
    return entry.nbr.co_users if entry.nbr is not None else _EMPTY


def popular_top(model: ServingModel, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k most popular items outside ``exclude`` (fewer only when the catalogue runs out)."""
    head = model.popular_order[: k + exclude.size]
    if exclude.size:
        head = head[~np.isin(head, exclude)]
    head = head[:k].astype(np.int64)
    return head, model.popularity[head].astype(np.float32)


class Recommender:
    def __init__(self, cache: Cache, metrics: Metrics, settings: Settings) -> None:
        self.cache = cache
        self.metrics = metrics
        self.settings = settings
        self._pending: set[asyncio.Task] = set()  # fire-and-forget cache writes, kept alive until done
        self.prompts = PromptPool(settings.prompt_workers, settings.prompt_queue, metrics.registry)
        self.swap_warmup = SwapWarmup(settings, metrics.registry)  # remembers who to warm before a swap

    # -- model wiring ----------------------------------------------------------------------------------------

    def attach(self, model: ServingModel) -> None:
        """Give a freshly loaded model its own micro-batcher (called before it becomes visible)."""
        model.batcher = MicroBatcher(
            lambda jobs: self._run_batch(model, jobs),
            max_size=self.settings.batch_max_size,
            max_wait_s=self.settings.batch_max_wait_ms / 1000.0,
            on_batch=self.metrics.batch_size.observe,
            thread_init=lambda: set_search_threads(self.settings.search_threads),
        )

    # -- input mapping ---------------------------------------------------------------------------------------

    @staticmethod
    def item_indices(model: ServingModel, ids: Sequence[str], field_name: str) -> np.ndarray:
        """Map raw item ids to indices (a new catalogue item to its stand-in); ids neither the version nor the
        catalogue has available raise UnknownItemsError naming them all."""
        return Recommender._resolve(model, ids, field_name).items

    @staticmethod
    def _resolve(model: ServingModel, ids: Sequence[str], field_name: str) -> Resolved:
        found = resolve(model, ids)
        if found.unknown:
            raise UnknownItemsError(field_name, found.unknown)
        return found

    # -- the request path ------------------------------------------------------------------------------------

    async def recommend(
        self,
        model: ServingModel,
        user_id: str,
        *,
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[str] = (),
        recent_items: Sequence[str] = (),
        record: bool = True,
    ) -> Recommendation:
        """``record=False`` (the cache warmer) leaves the request counters alone."""
        session = self._resolve(model, recent_items, "recent_items")
        recent = session.items
        # Excluding an id this model does not know cannot change the answer, so it is not an error.
        excl = resolve(model, exclude_items)
        extra_excl = np.concatenate([excl.known, excl.new])
        u = model.user_index.get(user_id)
        reasons: list[str] = []

        lookup = None
        t0 = time.perf_counter()
        try:
            lookup = await self.cache.lookup(model.version, user_id)
            result = "hit" if lookup.entry is not None else "miss"
        except RedisUnavailable:
            result = "error"
            reasons.append(CACHE_UNAVAILABLE)
        if record:
            self.metrics.cache_lookups.labels(result).inc()
            self.metrics.stage_seconds.labels("cache").observe(time.perf_counter() - t0)

        # Live history holds raw ids; ids neither this version nor the catalogue has are skipped, not errors.
        logged = resolve(model, lookup.history) if lookup is not None else _NOTHING
        live = logged.items
        # oldest first where the version's graph kept the time order, so the newest events end the prompt
        train = model.graph.user_items_in_time(u) if u is not None else _EMPTY
        hist = History(train, live, recent)
        history = hist.all
        # A new item is in the prompt as its nearest known item, which the user did not choose: that one is
        # neither excluded nor named as theirs; the new item itself (a code >= n_items) is excluded.
        proxies = np.concatenate([logged.stand_ins, session.stand_ins])
        if proxies.size:
            proxies = np.setdiff1d(proxies, np.concatenate([train, logged.known, session.known]))
            history = history[~np.isin(history, proxies)]
        seen = np.concatenate([history, logged.new, session.new]) if exclude_seen else _EMPTY
        withdrawn = model.catalogue.excluded if model.catalogue is not None else _EMPTY
        exclude = np.unique(np.concatenate([seen, extra_excl, withdrawn])).astype(np.int64)

        co_users = _EMPTY
        if hist.all.size == 0:
            reasons.append(POPULARITY)
            ids, scores = popular_top(model, k, exclude)
        else:
            if u is None:
                reasons.append(COLD_START)
            ids, scores, co_users = await self._personal(model, user_id, u, lookup, hist, k, exclude)

        if record:
            for r in reasons:
                self.metrics.fallbacks.labels(r).inc()
            self.metrics.recommendations.inc()
            self.swap_warmup.recent.touch(user_id)
        return Recommendation(
            user_id,
            model.version,
            ids,
            scores,
            reasons,
            known_user=u is not None,
            history=history,
            co_users=co_users,
        )

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain_writes(self) -> None:
        """Wait for the cache writes spawned so far (a warm-up's entries must land before its swap)."""
        await asyncio.gather(*list(self._pending), return_exceptions=True)

    def close(self) -> None:
        self.prompts.close()

    # -- the batch function (worker thread) ------------------------------------------------------------------

    async def _personal(
        self,
        model: ServingModel,
        user_id: str,
        u: int | None,
        lookup: Lookup | None,
        hist: History,
        k: int,
        exclude: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prompt → encoder → search, reusing the cache entry where the request allows it; also returns the
        prompt's second-order users (for explanations)."""
        train, live, recent = hist.train, hist.live, hist.recent
        stored, history = hist.stored, hist.all
        entry = Entry()
        if lookup is not None and lookup.entry is not None:
            try:
                entry = Entry.unpack(lookup.entry)
            except ValueError:
                log.warning("malformed neighbourhood cache entry ignored")
        # The entry describes the stored history only: its neighbourhood and distances serve a request whose
        # session items are all in it; its user vector only a request with no session items (order matters).
        reuse = lookup is not None and stored.size > 0 and bool(np.isin(recent, stored).all())
        reuse_vector = reuse and recent.size == 0 and self.settings.cache_user_vectors
        if not reuse:
            entry = Entry()
        assert model.batcher is not None, "model was not attached to the recommender"
        vec = entry.vector if reuse_vector else None
        usable = vec is not None and vec.shape == (model.ranker.dim,)
        if usable and (entry.boost is not None or not model.encoder.has_candidates):
            self.metrics.encoder_skipped.inc()
            job = _Job(None, vec, entry.boost if model.encoder.has_candidates else None, k, exclude, history)
            ids, scores, _, _ = await model.batcher.submit(job)
            return ids, scores, _co_users(entry)

        new_edges = np.setdiff1d(np.concatenate([live, recent]), train) if u is not None else _EMPTY
        edges = (np.full(new_edges.size, u, dtype=np.int64), new_edges) if new_edges.size else None
        from_version = self._from_version(model, u, hist, entry)
        args = (model, u, history, entry, stored if stored.size else recent, edges)
        if from_version or (entry.nbr is not None and entry.distances is not None):
            prompt, fresh = self._prompt(*args)  # no graph search left: ~0.2 ms, not worth a thread hop
        else:
            prompt, fresh = await self.prompts.run(self._prompt, *args)  # PromptPoolFull: a 503
        ids, scores, vector, boost = await model.batcher.submit(_Job(prompt, None, None, k, exclude, history))
        if reuse_vector:
            entry.vector, entry.boost, fresh = vector, boost, True
        if fresh and reuse:
            # the version holds this user's distances (the bulk of an entry): Redis need not hold them twice
            kept = Entry(entry.nbr, None, entry.vector, entry.boost) if from_version else entry
            packed = kept.pack(lookup.fingerprint)
            self._spawn(self.cache.store_entry(model.version, user_id, packed))
        return ids, scores, _co_users(entry)

    @staticmethod
    def _from_version(model: ServingModel, u: int | None, hist: History, entry: Entry) -> bool:
        """Fill ``entry``'s neighbourhood and hop distances from the version's stored ones when this request's
        history is the user's train history, the one they were computed for (exactly what ``_prompt`` would
        compute); False when that does not apply."""
        stored = model.neighbourhoods
        if stored is None or u is None or not np.array_equal(hist.all, hist.train):
            return False
        found = stored.lookup(u, hist.train)
        if found is None:
            return False
        nbr, distances = found
        entry.nbr = nbr if model.builder.wants_neighbourhood else None
        entry.distances = distances
        return True

    def _prompt(
        self,
        model: ServingModel,
        user: int | None,
        history: np.ndarray,
        entry: Entry,
        nbr_items: np.ndarray,
        edges: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[EncodedPrompt, bool]:
        """The prompt, from ``entry`` where it covers it; fills ``entry`` and says whether it changed."""
        builder, cfg = model.builder, model.builder.cfg
        stage = self.metrics.stage_seconds
        fresh = False
        if builder.wants_neighbourhood and entry.nbr is None and nbr_items.size:
            t = time.perf_counter()
            entry.nbr = builder.neighbourhood(user, nbr_items)
            entry.distances, fresh = None, True  # distances belong to the neighbourhood they came with
            stage.labels("neighbourhood").observe(time.perf_counter() - t)

        t = time.perf_counter()
        prompt = builder.predictive(user, history, entry.nbr, with_bias=False)
        nodes = prompt.node_ids[prompt.node_ids >= 0]
        if cfg.bias.enabled and nodes.size:
            if entry.distances is None or not np.isin(nodes, entry.distances[0]).all():
                entry.distances, fresh = builder.distances(nodes, extra_edges=edges), True
            prompt = builder.with_bias(prompt, distances=entry.distances)
        elif prompt.strength is not None and builder.writes_strength:
            prompt = builder.with_bias(prompt)  # graph bias off: only the prior's strength row, no BFS
        stage.labels("prompt").observe(time.perf_counter() - t)
        return prompt, fresh

    def _run_batch(self, model: ServingModel, jobs: Sequence[_Job]) -> list[_Ranked]:
        """Encoder + FAISS for one micro-batch (worker thread; both release the GIL while they compute),
        through the inference core; jobs with a cached user vector skip the encoder."""
        stage = self.metrics.stage_seconds
        vectors = np.empty((len(jobs), model.ranker.dim), dtype=np.float32)
        boosts: list[Boost | None] = [job.boost for job in jobs]
        rows = [i for i, job in enumerate(jobs) if job.prompt is not None]
        for i, job in enumerate(jobs):
            if job.vector is not None:
                vectors[i] = job.vector
        if rows:
            t = time.perf_counter()
            prompts = [jobs[i].prompt for i in rows]
            found, found_boosts = model.encode(
                prompts, [jobs[i].history for i in rows], self.settings.encode_chunk
            )
            vectors[rows] = found
            for i, b in zip(rows, found_boosts, strict=True):
                boosts[i] = b
            stage.labels("encode").observe(time.perf_counter() - t)

        t = time.perf_counter()
        k_max = max(job.k for job in jobs)
        known, new = zip(*(split_exclusions(model, job.exclude) for job in jobs), strict=True)
        ids, scores = model.search(vectors, k_max, known, boosts)
        # New catalogue items (the view current now: codes are stable, so the jobs' exclusions still apply)
        view = model.catalogue
        if view is not None and len(view.side):
            bonus = None
            if model.text is not None and view.side.bags is not None:
                bonus = model.text.affinity(vectors, [job.history for job in jobs], view.side.bags)
            ids, scores = view.side.merge(vectors, ids, scores, new, bonus)
        stage.labels("search").observe(time.perf_counter() - t)

        out = []
        for row, job in enumerate(jobs):
            r_ids, r_scores = ids[row, : job.k], scores[row, : job.k]
            keep = r_ids >= 0  # -1 pads rows the catalogue could not fill
            out.append(
                (r_ids[keep].astype(np.int64), r_scores[keep].astype(np.float32), vectors[row], boosts[row])
            )
        return out

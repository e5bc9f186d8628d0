"""No cold cache after a swap: warm the recently active users for a new version before it takes traffic.

Cache entries are per version, so the first minutes after a promotion used to be all misses (the last
measurement: throughput down ~5x for several seconds). Every request this process answers
marks its user in :class:`RecentUsers` (bounded: an LRU of ``EDGEREC_SWAP_WARM_USERS`` ids with request
counts, a dict move per request, no Redis call). When a version has been loaded and checked, and before the
one-assignment swap, the users seen within ``EDGEREC_SWAP_WARM_WINDOW_S`` are run through the ordinary request
path against the *new* version (the most frequent first, ``EDGEREC_WARM_CONCURRENCY`` at a time, results
discarded), which writes their entries under the new version; the old version keeps serving meanwhile. The
warm-up stops at ``EDGEREC_SWAP_WARM_S``: a swap is delayed by at most that, never blocked. On a saturated
machine the warm-up competes with the traffic for the encoder, so the old version serves more slowly while
it runs (``docs/benchmarks.md``, "Cold path").

Each worker process keeps its own recent set and warms its own users; entries live in Redis, so what one
worker warms is a hit for every worker. The broader ``EDGEREC_WARM_CACHE`` (every known user, after the swap,
one replica per version) is ``service/warmer.py``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge

from service.config import Settings

if TYPE_CHECKING:
    from service.recommender import Recommender
    from service.serving import ServingModel

log = logging.getLogger("edgerec.swap_warmup")


class RecentUsers:
    """The ``capacity`` users answered most recently, with when and how often (an LRU; event loop only)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # user -> (last seen, requests)

    def touch(self, user_id: str, now: float | None = None) -> None:
        if self.capacity <= 0:
            return
        count = self._seen.pop(user_id, (0.0, 0))[1]
        self._seen[user_id] = (time.monotonic() if now is None else now, count + 1)
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def active(self, window_s: float, now: float | None = None) -> list[str]:
        """Users seen within ``window_s``, most requests first (then most recent): when the warm-up runs out
        of time, the users warmed are those most likely to come back."""
        since = (time.monotonic() if now is None else now) - window_s
        recent = []
        for user, (seen, count) in reversed(self._seen.items()):
            if seen < since:
                break
            recent.append((user, count))
        return [user for user, _ in sorted(recent, key=lambda uc: -uc[1])]  # stable: recency breaks ties

    def __len__(self) -> int:
        return len(self._seen)


class SwapWarmup:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.recent = RecentUsers(settings.swap_warm_users)
        self.warmed = Gauge(
            "edgerec_swap_warmed_users",
            "Users whose cache entries the last swap warmed for the new version before it took traffic.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.seconds = Gauge(
            "edgerec_swap_warm_seconds",
            "How long the last swap's warm-up took.",
            registry=registry,
            multiprocess_mode="livemax",
        )

    async def warm(self, recommender: Recommender, model: ServingModel) -> int:
        """Warm the recent users' entries for ``model`` (not yet serving); returns how many were done."""
        s = self.settings
        users = self.recent.active(s.swap_warm_window_s)
        t0 = time.monotonic()
        done = 0
        if users and s.swap_warm_s > 0:
            try:
                async with asyncio.timeout(s.swap_warm_s):
                    for start in range(0, len(users), s.warm_concurrency):
                        chunk = users[start : start + s.warm_concurrency]
                        jobs = (recommender.recommend(model, u, k=1, record=False) for u in chunk)
                        results = await asyncio.gather(*jobs, return_exceptions=True)
                        done += sum(not isinstance(r, BaseException) for r in results)
                    await recommender.drain_writes()  # entries stored before the swap, not after
            except TimeoutError:
                pass
        seconds = time.monotonic() - t0
        self.warmed.set(done)
        self.seconds.set(seconds)
        if users:
            log.info(
                "recent users warmed before the swap",
                extra={
                    "version": model.version,
                    "users": done,
                    "of": len(users),
                    "seconds": round(seconds, 2),
                },
            )
        return done

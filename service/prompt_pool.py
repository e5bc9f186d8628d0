"""Graph work of cache misses, off the event loop: a few threads and a bounded number of waiting jobs.

A miss for a train user whose history is the train history reads the version's stored neighbourhood and
needs no graph work (``inference/neighbourhoods.py``). The rest (users with live or session items, cold
starts) need ``builder.neighbourhood`` and a bounded BFS, 1-10 ms of numpy. On the event loop that time
stalls every other request; here it runs in ``EDGEREC_PROMPT_WORKERS`` threads while the loop keeps serving
(numpy releases the GIL inside its array kernels, so the loop gets turns).

At most ``EDGEREC_PROMPT_QUEUE`` jobs wait for a thread. Past that the service is overloaded with graph work
and a new job is refused with :class:`PromptPoolFull`, which the app answers with 503 and Retry-After: an
honest, fast "try again" beats a queue that grows until every request times out, and a client's retry
lands when the pool has drained. (Computing on the event loop instead would slow every request, cache hits
included; a popularity answer would be a silent wrong answer.) ``edgerec_prompt_pool_rejected_total`` counts
the refusals, ``edgerec_prompt_pool_jobs`` the jobs running or waiting."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

T = TypeVar("T")


class PromptPoolFull(Exception):
    """Every prompt worker is busy and the wait queue is full: answer 503 with Retry-After."""


class PromptPool:
    def __init__(self, workers: int, queue: int, registry: CollectorRegistry | None = None) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("a prompt pool needs workers >= 1 and queue >= 0")
        self.limit = workers + queue  # running + waiting
        self.jobs = 0  # touched on the event loop only, so no lock
        self.rejected = Counter(
            "edgerec_prompt_pool_rejected_total",
            "Requests answered 503 because the prompt workers and their queue were full.",
            registry=registry,
        )
        self.in_pool = Gauge(
            "edgerec_prompt_pool_jobs",
            "Prompt jobs running or waiting for a worker (all worker processes together).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgerec-prompt")

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in a worker thread; PromptPoolFull at once when the pool is full."""
        if self.jobs >= self.limit:
            self.rejected.inc()
            raise PromptPoolFull(f"{self.jobs} prompt jobs running or waiting (limit {self.limit})")
        self._count(+1)
        try:
            ctx = contextvars.copy_context()  # log lines of the job keep the request id
            return await asyncio.get_running_loop().run_in_executor(self._executor, ctx.run, fn, *args)
        finally:
            self._count(-1)

    def _count(self, step: int) -> None:
        self.jobs += step
        self.in_pool.set(self.jobs)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

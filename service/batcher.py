"""Micro-batching: concurrent requests' jobs are gathered into one call of a batch function run off the event
loop.

The worker takes the first waiting job, then gathers more until ``max_size`` jobs or ``max_wait_s`` have
passed, runs ``fn(jobs)`` in a single worker thread (the encoder already uses several cores inside one call)
and resolves each job's future. While one batch runs, new jobs queue up and form the next batch, so batches
grow with load on their own and the wait only matters under light load.

The worker starts on first use and stops when ``close()`` is called and the queue is drained; a job submitted
after ``close()`` (a request that picked the old model just before a hot swap) restarts it, so no request is
ever lost."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")

log = logging.getLogger("edgerec.batcher")


_STOP = object()  # wakes a worker blocked on an empty queue so it can notice close()


class MicroBatcher(Generic[J, R]):
    def __init__(
        self,
        fn: Callable[[Sequence[J]], Sequence[R]],
        *,
        max_size: int = 32,
        max_wait_s: float = 0.001,
        on_batch: Callable[[int], None] | None = None,
        name: str = "encoder",
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.fn = fn
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.name = name
        self.thread_init = thread_init  # runs once in the worker thread (per-thread library settings)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    async def submit(self, job: J) -> R:
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait((job, fut))
        if self._worker is None or self._worker.done():
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"edgerec-{self.name}", initializer=self.thread_init
                )
            # A fresh context: the worker must not inherit (and log under) the first caller's request id.
            self._worker = loop.create_task(self._run(self._executor), context=contextvars.Context())
        return await fut

    async def _gather(self, first: tuple[J, asyncio.Future[R]]) -> list[tuple[J, asyncio.Future[R]]]:
        assert self._queue is not None
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    break
            if item is not _STOP:
                batch.append(item)
        return batch

    async def _run(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        assert queue is not None
        try:
            while not (self._closed and queue.empty()):
                first = await queue.get()
                if first is _STOP:
                    continue
                batch = await self._gather(first)
                live = [(job, fut) for job, fut in batch if not fut.cancelled()]
                if not live:
                    continue
                if self.on_batch:
                    self.on_batch(len(live))
                try:
                    results = await loop.run_in_executor(executor, self.fn, [job for job, _ in live])
                    if len(results) != len(live):
                        raise RuntimeError(
                            f"batch function returned {len(results)} results for {len(live)} jobs"
                        )
                except Exception as exc:  # every caller in the batch gets the error; the worker keeps going
                    for _, fut in live:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), res in zip(live, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            if self._executor is executor:
                self._executor = None
            executor.shutdown(wait=False)

    def close(self) -> None:
        """Finish queued work, then let the worker and its thread go (a later submit still works)."""
        self._closed = True
        if self._queue is not None:
            self._queue.put_nowait(_STOP)

"""Background loops of the service (catalogue poller, model-store poller, cache warmer): how they stop.

redis-py's asyncio client can swallow a CancelledError that lands while a command is in flight (seen here with
redis 8.2 on ``GET``; upstream: redis/redis-py#2028, #2551). A loop that waits only for the exception then
keeps running, and a shutdown that awaits it waits forever (uvicorn never exits; in Kubernetes the pod sits
out its grace period and is killed). So the loops also check :func:`cancelled`, and :func:`stop` waits a
bounded time and says which task did not stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

log = logging.getLogger("edgerec.background")


def cancelled() -> bool:
    """True once the running task was asked to stop, even if a library swallowed the CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop(tasks: Iterable[asyncio.Task | None], timeout_s: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them, ``timeout_s`` at most; a task still running is logged and left."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    if not live:
        return
    done, pending = await asyncio.wait(live, timeout=timeout_s)
    for task in done:
        with contextlib.suppress(asyncio.CancelledError):
            if task.exception() is not None:
                log.warning("background task ended with an error", extra={"task": task.get_name()})
    for task in pending:
        log.warning("background task did not stop in time", extra={"task": task.get_name()})

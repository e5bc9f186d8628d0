"""Background loops stop on shutdown even when a library swallows their CancelledError (redis-py does, now
and then, for a cancel that lands inside a command): the catalogue poller seen hanging uvicorn's exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service.background import cancelled, stop
from service.catalogue import Catalogue


class _Client:
    def register_script(self, _):
        return None


async def _swallowing_refresh(written=None) -> None:
    with contextlib.suppress(asyncio.CancelledError):  # what redis-py's asyncio client does now and then
        await asyncio.sleep(10)


def test_catalogue_poller_stops_although_its_redis_call_swallowed_the_cancel():
    async def main():
        catalogue = Catalogue(_Client(), "bg-test", lambda: None)
        catalogue.refresh = _swallowing_refresh
        task = asyncio.create_task(catalogue.poll(0.001))
        await asyncio.sleep(0.05)  # inside the swallowing call
        await stop([task], timeout_s=2)
        return task.done()

    assert asyncio.run(main())


def test_stop_gives_up_on_a_task_that_never_stops_and_names_it(caplog):
    release = asyncio.Event()

    async def stubborn():
        while not release.is_set():  # ignores every cancel on purpose, until released
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    async def main():
        task = asyncio.create_task(stubborn(), name="stubborn-loop")
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await stop([task, None], timeout_s=0.2)
        took, still_running = loop.time() - t0, not task.done()
        release.set()  # let asyncio.run's own clean-up finish
        await task
        return took, still_running

    with caplog.at_level(logging.WARNING, logger="edgerec.background"):
        took, still_running = asyncio.run(main())
    assert still_running and took < 2
    assert any(getattr(r, "task", None) == "stubborn-loop" for r in caplog.records)


def test_cancelled_is_false_outside_a_cancel_and_true_after_one():
    async def main():
        seen = []

        async def loop():
            seen.append(cancelled())
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append(cancelled())

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0.01)
        return seen

    assert asyncio.run(main()) == [False, True]

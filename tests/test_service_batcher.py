"""The micro-batcher: concurrent jobs share a call, bounded size, off-loop, errors, close/restart."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import MicroBatcher


def test_concurrent_jobs_are_batched_and_results_routed():
    sizes: list[int] = []
    threads: set[int] = set()

    def fn(jobs):
        threads.add(threading.get_ident())
        time.sleep(0.01)  # while this runs, the other callers queue up
        return [j * 10 for j in jobs]

    async def go():
        b = MicroBatcher(fn, max_size=8, max_wait_s=0.005, on_batch=sizes.append)
        out = await asyncio.gather(*(b.submit(i) for i in range(30)))
        b.close()
        return out

    assert asyncio.run(go()) == [i * 10 for i in range(30)]
    assert max(sizes) == 8 and sum(sizes) == 30 and len(sizes) < 30
    assert threading.get_ident() not in threads  # never on the event loop's thread


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on():
    def fn(jobs):
        if "bad" in jobs:
            raise RuntimeError("boom")
        return list(jobs)

    async def go():
        b = MicroBatcher(fn, max_size=4, max_wait_s=0.01)
        res = await asyncio.gather(b.submit("bad"), b.submit("x"), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in res)
        assert await b.submit("ok") == "ok"

    asyncio.run(go())


def test_submit_after_close_still_answers():
    async def go():
        b = MicroBatcher(lambda jobs: [j + 1 for j in jobs], max_size=4, max_wait_s=0)
        assert await b.submit(1) == 2
        b.close()
        await asyncio.sleep(0.01)
        assert await b.submit(2) == 3  # a request that picked an old model just before a swap

    asyncio.run(go())


def test_wrong_result_count_is_an_error():
    async def go():
        b = MicroBatcher(lambda jobs: [], max_size=2, max_wait_s=0)
        with pytest.raises(RuntimeError, match="0 results for 1 jobs"):
            await b.submit(1)

    asyncio.run(go())


def test_thread_init_sets_per_thread_search_threads_in_the_worker():
    # OpenMP keeps the thread count per thread: set only where the model was loaded, FAISS in the micro-batch
    # thread would search with one thread per core. 3 differs from any default, so this fails without init.
    import faiss

    from service.serving import set_search_threads

    inits: list[int] = []

    def init():
        inits.append(threading.get_ident())
        set_search_threads(3)

    def fn(jobs):
        return [(threading.get_ident(), faiss.omp_get_max_threads()) for _ in jobs]

    async def go():
        b = MicroBatcher(fn, max_size=2, max_wait_s=0.0, thread_init=init)
        out = [await b.submit(i) for i in range(3)]  # three separate batches, one worker thread
        b.close()
        return out

    out = asyncio.run(go())
    assert {o[1] for o in out} == {3}
    assert len(inits) == 1 and {o[0] for o in out} == set(inits)

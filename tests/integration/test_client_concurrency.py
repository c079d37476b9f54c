"""Many waiters on one page, and close() under them (issue 9): threads and asyncio tasks wait on
one page at once, alone or mixed, with other calls going on; closing wakes them with ValueError
and closes the fds only after they have left. Against a real driver ticking every 20 ms."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable

import pytest

import sharingmemory
from tests.support import DriverProcess, wait_for

WAITS = 5


def _in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """Run `work(i)` in `count` threads at once; their results, or the exception each raised."""
    results: list[object] = [None] * count
    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = work(index)
        except BaseException as err:
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_threads_waiting_on_one_page_each_see_rising_ticks(fast_driver: DriverProcess, no_fd_leak: None) -> None:
    with fast_driver.open_device(map=True) as device:
        page = device.map_shared_memory()
        results = _in_threads(4, lambda _i: [page.wait_next(timeout=5).tick_count for _ in range(WAITS)])
    for ticks in results:
        assert isinstance(ticks, list), ticks
        assert all(later > earlier for earlier, later in itertools.pairwise(ticks))


def test_threads_mixing_waits_reads_and_requests_on_one_device(fast_driver: DriverProcess) -> None:
    with fast_driver.open_device(map=True) as device:
        page = device.map_shared_memory()

        def work(index: int) -> object:
            for _ in range(WAITS):
                if index % 3 == 0:
                    page.wait_next(timeout=5)
                elif index % 3 == 1:
                    assert device.query_status().handles >= 1
                else:
                    assert device.map_shared_memory() is page
                    page.read()
            return "done"

        assert _in_threads(6, work) == ["done"] * 6


def test_asyncio_tasks_waiting_on_one_page_all_get_every_tick(fast_driver: DriverProcess) -> None:
    async def main(page: sharingmemory.SharedPage) -> list[list[int]]:
        async def task() -> list[int]:
            return [(await page.next_update()).tick_count for _ in range(WAITS)]

        async with asyncio.timeout(10):
            return await asyncio.gather(*(task() for _ in range(3)))

    with fast_driver.open_device(map=True) as device:
        for ticks in asyncio.run(main(device.map_shared_memory())):
            assert all(later > earlier for earlier, later in itertools.pairwise(ticks))


def test_a_cancelled_task_does_not_stall_the_others(fast_driver: DriverProcess) -> None:
    async def main(page: sharingmemory.SharedPage) -> int:
        impatient = asyncio.create_task(page.next_update())
        patient = asyncio.create_task(page.next_update())
        await asyncio.sleep(0)
        impatient.cancel()  # the task that registered the readers leaves first
        async with asyncio.timeout(10):
            first = (await patient).tick_count
            return (await page.next_update()).tick_count - first

    with fast_driver.open_device(map=True) as device:
        assert asyncio.run(main(device.map_shared_memory())) >= 1


def test_tasks_and_threads_wait_on_one_page_together(fast_driver: DriverProcess) -> None:
    with fast_driver.open_device(map=True) as device:
        page = device.map_shared_memory()

        async def tasks() -> list[int]:
            async with asyncio.timeout(10):
                return [(await page.next_update()).tick_count for _ in range(WAITS)]

        def work(index: int) -> object:
            if index == 0:
                return asyncio.run(tasks())
            return [page.wait_next(timeout=5).tick_count for _ in range(WAITS)]

        for ticks in _in_threads(3, work):
            assert isinstance(ticks, list), ticks
            assert all(later > earlier for earlier, later in itertools.pairwise(ticks))


@pytest.mark.parametrize("close", ["device", "page"])
def test_close_from_another_thread_wakes_the_waiters_with_value_error(
    driver: DriverProcess, close: str, no_fd_leak: None
) -> None:
    """With a 1 s driver the waiters are inside poll(2) when close() comes."""
    device = driver.open_device(map=True)
    page = device.map_shared_memory()
    page._futex_asked = True  # the tick channel, as a 1.0 driver's page gets (test_page_futex_wait: the futex's)
    page.wait_next(timeout=5)  # the tick fd exists: every waiter below polls it
    waiting = threading.Barrier(4)

    def work(index: int) -> object:
        if index == 3:
            waiting.wait()
            assert wait_for(lambda: page._tick_event is not None and page._tick_event._waiters == 3)
            (device if close == "device" else page).close()
            return "closed"
        waiting.wait()
        return page.wait_next(timeout=30)

    results = _in_threads(4, work)
    assert results[3] == "closed"
    for result in results[:3]:
        assert isinstance(result, ValueError), result  # never a bare OSError(EBADF)
    device.close()
    with pytest.raises(ValueError, match="closed"):
        page.wait_next(timeout=1)


def test_close_while_a_task_awaits_gives_it_value_error(driver: DriverProcess, no_fd_leak: None) -> None:
    async def main(device: sharingmemory.Device) -> BaseException | None:
        page = device.map_shared_memory()
        waiter = asyncio.create_task(page.next_update())
        await asyncio.sleep(0.05)
        device.close()
        async with asyncio.timeout(10):
            try:
                await waiter
            except ValueError as err:
                return err
        return None

    device = driver.open_device(map=True)
    assert isinstance(asyncio.run(main(device)), ValueError)


def test_waits_after_many_threads_left_leave_no_fd(fast_driver: DriverProcess, no_fd_leak: None) -> None:
    for _ in range(5):
        with fast_driver.open_device(map=True) as device:
            page = device.map_shared_memory()
            results = _in_threads(3, lambda _i, page=page: page.wait_next(timeout=5))  # type: ignore[misc]
            assert all(isinstance(result, sharingmemory.PageSnapshot) for result in results)
    assert fast_driver.status().handles == 1  # the status query's own

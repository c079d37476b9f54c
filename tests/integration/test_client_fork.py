"""os.fork() while the parent is busy with a Device (issue 9): a thread of the parent waits on
the page, or a request is in flight, at the fork; the child's asyncio waits and its close()
neither deadlock on the parent's locks nor disturb the parent's handle."""

from __future__ import annotations

import asyncio
import threading

import pytest

import sharingmemory
from tests.support import DriverProcess, run_in_fork


# The fork with a thread running is the point of this test (Python 3.12+ warns about it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_while_a_parent_thread_waits_leaves_both_working(fast_driver: DriverProcess) -> None:
    with fast_driver.open_device(map=True) as device:
        page = device.map_shared_memory()
        page.wait_next(timeout=5)
        results: list[object] = []
        waiting = threading.Thread(target=lambda: results.extend(page.wait_next(timeout=5) for _ in range(20)))
        waiting.start()

        def child() -> bool:
            async def awaited() -> int:
                async with asyncio.timeout(5):
                    return (await page.next_update()).tick_count

            tick = asyncio.run(awaited())  # by the page's deadline: the tick fd is the parent's
            device.close()  # no deadlock on a lock the parent's thread held; nothing sent
            return tick > 0 and page.closed

        try:
            assert run_in_fork(child) == 0
        finally:
            waiting.join(30)
        assert len(results) == 20  # the parent's waiter saw every one of its ticks
        assert device.query_status().handles >= 1  # and its handle is still in step


def test_the_child_cannot_send_on_the_parents_handle_under_asyncio_either(driver: DriverProcess) -> None:
    with driver.open_device(map=True) as device:

        def child() -> bool:
            async def query() -> bool:
                try:
                    await asyncio.to_thread(device.query_status)
                except sharingmemory.InvalidHandle:
                    return True
                return False

            return asyncio.run(query())

        assert run_in_fork(child) == 0
        assert device.query_status().handles == 1

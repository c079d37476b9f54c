"""asyncio tasks waiting on sections share one watcher thread per section, however many they are.

The first implementation slept in `asyncio.to_thread`: a thread of the loop's default executor
(6 threads on a 2-CPU machine) per waiting task, so a seventh task queued behind the others
and the executor was not there for anything else. Real driver and producer processes.
"""

from __future__ import annotations

import asyncio
import threading

import sharingmemory
from tests.integration.test_sections import Producer
from tests.support import DriverProcess

TASKS = 20  # over three times the default executor of this machine


def _watchers() -> int:
    return sum(thread.name == "sharingmemory-futex-wait" for thread in threading.enumerate())


def test_many_tasks_share_one_watcher_and_all_see_the_publish(driver: DriverProcess) -> None:
    producer = Producer(driver)
    try:
        with driver.open() as device:
            section = device.open_section("sensors.cpu")

            async def scenario() -> tuple[list[int], int, int]:
                tasks = [asyncio.ensure_future(section.next_update()) for _ in range(TASKS)]
                await asyncio.sleep(0.3)  # every task is waiting now
                watchers = _watchers()
                # The default executor is free for others while they wait.
                async with asyncio.timeout(5):
                    echoed = await asyncio.to_thread(lambda: 7)
                await asyncio.to_thread(producer.publish, a=9)
                async with asyncio.timeout(30):
                    snaps = await asyncio.gather(*tasks)
                return [snap.a for snap in snaps], watchers, echoed

            values, watchers, echoed = asyncio.run(scenario())
            assert values == [9] * TASKS
            assert watchers == 1
            assert echoed == 7
    finally:
        producer.kill()


def test_a_cancelled_task_and_a_closed_section_leave_no_watcher(driver: DriverProcess) -> None:
    producer = Producer(driver)
    try:
        with driver.open() as device:
            section = device.open_section("sensors.cpu")

            async def cancel_one_close_the_other() -> BaseException | None:
                cancelled = asyncio.ensure_future(section.next_update())
                waiting = asyncio.ensure_future(section.next_update())
                await asyncio.sleep(0.1)
                cancelled.cancel()
                section.close()
                async with asyncio.timeout(10):
                    results = await asyncio.gather(cancelled, waiting, return_exceptions=True)
                assert isinstance(results[0], asyncio.CancelledError)
                error = results[1]
                return error if isinstance(error, BaseException) else None

            error = asyncio.run(cancel_one_close_the_other())
            assert isinstance(error, ValueError), error  # the closed section, not a hang
            for _ in range(100):  # the watcher leaves within one slice of its last task
                if _watchers() == 0:
                    break
                threading.Event().wait(0.01)
            assert _watchers() == 0
            assert isinstance(section, sharingmemory.Section)
    finally:
        producer.kill()


def test_threads_and_tasks_waiting_on_one_section_each_see_the_publish(driver: DriverProcess) -> None:
    """Each wait has its own baseline: a publish ends every wait that was running, not only the
    first to look (which once took it from the others, who then waited for the next one)."""
    producer = Producer(driver)
    try:
        with driver.open() as device:
            section = device.open_section("sensors.cpu")
            section.read()
            seen: list[int] = []
            threads = [threading.Thread(target=lambda: seen.append(section.wait_next(timeout=30).a)) for _ in range(4)]

            async def tasks_and_publish() -> list[int]:
                waits = [asyncio.ensure_future(section.next_update()) for _ in range(4)]
                for thread in threads:
                    thread.start()
                await asyncio.sleep(0.3)
                await asyncio.to_thread(producer.publish, a=5)
                async with asyncio.timeout(30):
                    return [snap.a for snap in await asyncio.gather(*waits)]

            from_tasks = asyncio.run(tasks_and_publish())
            for thread in threads:
                thread.join(30)
            assert from_tasks == [5] * 4
            assert seen == [5] * 4
    finally:
        producer.kill()

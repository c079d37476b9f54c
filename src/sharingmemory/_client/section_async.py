"""asyncio waits on a futex word (a section's, the page's): one watcher thread per word, whatever
the number of tasks (used by `futex_wait`).

Theory of operation. A futex cannot be polled by an event loop, so an asyncio task cannot sleep
on a section's `seq` itself; the first implementation slept in `asyncio.to_thread`, a thread of
the loop's default executor per waiting task. That executor has `min(32, CPUs + 4)` threads (6
on this project's machines): a seventh waiting task queued behind the others for a whole wait
slice, and every other user of the executor (a `getaddrinfo`, a file read) with it.

`AsyncWake` keeps one thread per section for all its waiting tasks, on every loop: each task
registers a future with the `seq` word it read before it looked for news; the thread sleeps on
the futex while every registered word is the current one (a task that read an older word has
news waiting: no sleep at all), and after each sleep (a wake-up, or the end of its bounded
slice) resolves every future registered so far. Each task then looks at the page itself, so a
spurious resolution costs one read. The thread exits when no task waits, and nothing it does
can leave a future unresolved: whatever a sleep raises (the section closed under it), the
futures of that round are resolved, and the tasks see the closed section themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile
        future.set_result(None)


class AsyncWake:
    """The futures of the tasks waiting on one section, and the one thread that wakes them."""

    def __init__(self, sleep: Callable[[int, float], None], current_word: Callable[[], int | None], slice_s: float):
        """`sleep(word, seconds)` is one bounded futex sleep on `seq`; `current_word()` reads
        `seq`'s low half, None once the section is closed."""
        self._sleep = sleep
        self._current_word = current_word
        self._slice = slice_s
        self._lock = threading.Lock()
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int]] = []
        self._thread: threading.Thread | None = None

    def after(self, word: int) -> asyncio.Future[None]:
        """A future of the running loop, resolved after the watcher's next sleep (or at once if
        `seq` has moved past `word` already)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiting.append((loop, future, word))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sharingmemory-futex-wait", daemon=True)
                self._thread.start()
        return future

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._thread = None
                    return
                words = {word for _loop, _future, word in self._waiting}
            try:
                current = self._current_word()
                if current is not None and words == {current}:
                    self._sleep(current, self._slice)
            except Exception:
                pass
            with self._lock:
                woken, self._waiting = self._waiting, []
            for loop, future, _word in woken:
                with contextlib.suppress(RuntimeError):  # that loop was closed meanwhile
                    loop.call_soon_threadsafe(_resolve, future)

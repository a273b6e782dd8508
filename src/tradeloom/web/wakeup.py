"""A wake-up flag for ONE waiting coroutine: what every live stream waits on.

``asyncio.Event`` does the same for any number of waiters, and pays for it with a deque of
waiters allocated with every Event (about 760 bytes). A process holding 15,000 streams, each
with a reader that waits, spends megabytes on deques that never hold more than one future.
:class:`Wakeup` keeps one optional future instead: the one of the current (or last) wait.

``wait`` hands out that future itself rather than a coroutine awaiting it: a stream waits
several times a second, and every object a waiting stream holds is one the garbage collector
scans in each young collection (at 15,000 streams those collections paused the loop for
tens of milliseconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


class Wakeup:
    """``set`` / ``clear`` / ``wait`` like ``asyncio.Event``, for a single waiter at a time.

    ``set`` may be called any number of times from callbacks on the event loop's thread; a
    ``wait`` returns at once while the flag is set. A second waiter while the first still
    waits is a programming error and raises ``RuntimeError``.
    """

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    def wait(self) -> Awaitable[None]:
        """Await it: done once the flag is set (at once if it is now). Cancelling the task
        that awaits it cancels only that wait; the next ``wait`` is a new one."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            raise RuntimeError("a Wakeup has one waiter at a time")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self._flag:
            waiter.set_result(None)
        return waiter

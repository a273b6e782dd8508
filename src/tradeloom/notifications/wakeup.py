"""A wake-up flag for ONE waiting coroutine: what every live stream waits on.

``asyncio.Event`` does the same for any number of waiters, and pays for it with a deque of
waiters allocated with every Event (about 760 bytes). A process holding 15,000 streams, each
with a reader that waits, spends megabytes on deques that never hold more than one future.
:class:`Wakeup` keeps one optional future instead, created only while its reader waits.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """``set`` / ``clear`` / ``wait`` like ``asyncio.Event``, for a single waiter at a time.

    ``set`` may be called any number of times from callbacks on the event loop's thread; a
    ``wait`` returns at once while the flag is set. A second coroutine waiting at the same
    time is a programming error and raises ``RuntimeError``.
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

    async def wait(self) -> None:
        if self._flag:
            return
        if self._waiter is not None:
            raise RuntimeError("a Wakeup has one waiter at a time")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

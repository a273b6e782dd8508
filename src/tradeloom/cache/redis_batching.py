"""Commands issued at about the same time go to Redis as one pipeline (automatic pipelining).

On the order path every order makes its own few Redis commands (the session or token, the
rate window, risk's read and its reservation), and a busy process has dozens of them waiting
on replies at once. Sent one by one, each pays a pooled-connection checkout, a write and a
read system call, a reply wake-up, and Redis a read and a write of its own. That was a fifth of
the API process's CPU at 1,000 orders/s. :class:`CommandBatcher` sends them together instead:

* **No waiting on purpose.** A command issued while no batch is in flight is sent at once,
  alone, by its caller (as cheap as a plain call). Commands issued while one is in flight
  queue and go as the next pipeline (``transaction=False``: no MULTI, other clients' commands
  may run between them) as soon as it returns, up to ``max_batch`` a pipeline. So batches
  grow only as far as Redis is slower than the callers.
* **Each caller gets its own reply or its own error.** A command Redis refuses (a script's
  error, a wrong type) fails that caller only. A pipeline that fails as a whole (the
  connection lost, a timeout) fails each of its commands with that error, as the command
  alone would have: whether it ran is unknown, and nothing is retried here (see
  :mod:`tradeloom.cache.redis`: no silent retries).
* **Order.** Commands reach Redis in the order they were issued; a caller's next command is
  issued only once its last one answered, so a caller's commands never overtake each other.
* **Cancelling a caller** whose command is still queued withdraws it (never sent); one
  already sent runs, and its reply is dropped, as with a plain call.

It belongs to one event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from dataclasses import dataclass

from redis.asyncio import Redis

MAX_BATCH = 512

Command = tuple[str | bytes | int | float, ...]


@dataclass(eq=False, slots=True)
class _Queued:
    command: Command
    reply: asyncio.Future[object]


class CommandBatcher:
    """Runs single Redis commands, pipelining those that arrive while others are in flight."""

    def __init__(self, redis: Redis, *, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._redis = redis
        self._max_batch = max_batch
        self._queue: deque[_Queued] = deque()
        self._busy = False  # a command or a pipeline is in flight
        self._flusher: asyncio.Task[None] | None = None
        self.pipelines = 0  # pipelines sent (not lone commands), for measurements
        self.pipelined = 0  # commands sent in them

    async def execute(self, *command: str | bytes | int | float) -> object:
        """Run one command (``"GET", key``, ``"EVALSHA", sha, 1, key, arg``, ...) and return
        its reply as redis-py parses it; raise its error."""
        if not self._busy:
            self._busy = True
            try:
                return await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
            finally:
                self._hand_over()
        queued = _Queued(command, asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        return await queued.reply  # cancelled while queued: its future is skipped

    def _hand_over(self) -> None:
        """The lone command is done: send what queued meanwhile, or become idle."""
        if self._queue:
            # In a context of its own: the pipeline is no one caller's (logs, traces).
            self._flusher = asyncio.create_task(
                self._flush(), name="redis-pipeline", context=contextvars.Context()
            )
        else:
            self._busy = False

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch: list[_Queued] = []
                while self._queue and len(batch) < self._max_batch:
                    queued = self._queue.popleft()
                    if not queued.reply.done():
                        batch.append(queued)
                if batch:
                    await self._send(batch)
        finally:
            self._busy = False
            self._flusher = None
            if self._queue:  # the flusher itself was cancelled (the loop is closing)
                for queued in self._queue:
                    if not queued.reply.done():
                        queued.reply.set_exception(RuntimeError("the Redis batcher stopped"))
                self._queue.clear()

    async def _send(self, batch: list[_Queued]) -> None:
        self.pipelines += 1
        self.pipelined += len(batch)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for queued in batch:
                    pipe.execute_command(*queued.command)
                replies: list[object] = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for queued in batch:
                if not queued.reply.done():
                    queued.reply.set_exception(_for_one(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for queued, reply in zip(batch, replies, strict=True):
            if queued.reply.done():
                continue
            if isinstance(reply, Exception):
                queued.reply.set_exception(reply)
            else:
                queued.reply.set_result(reply)


def _for_one(exc: BaseException) -> BaseException:
    """The error to raise in one caller: a copy of a pipeline's failure where it can be made
    (so each caller's traceback is its own), the failure itself otherwise."""
    if isinstance(exc, asyncio.CancelledError):
        return RuntimeError("the Redis batcher stopped")
    try:
        copy = type(exc)(*exc.args)
    except Exception:
        return exc
    copy.__cause__ = exc
    return copy

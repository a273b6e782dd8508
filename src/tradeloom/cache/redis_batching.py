"""Commands issued at about the same time go to Redis as one pipeline (automatic pipelining).

On the order path every order makes its own few Redis commands (the session or token, the
rate window, risk's read and its reservation), and a busy process has dozens of them waiting
on replies at once. Sent one by one, each pays a pooled-connection checkout, a write and a
read system call, a reply wake-up, and Redis a read and a write of its own: a fifth of the
API process's CPU at full load. :class:`CommandBatcher` sends them together instead:

* **No waiting on purpose.** While fewer than ``max_in_flight`` sends are in flight, a command
  is sent at once, alone, by its caller (as cheap as a plain call). Past that, commands queue
  and go together as one pipeline (``transaction=False``: no MULTI, other clients' commands
  may run between them) as soon as a send returns, up to ``max_batch`` a pipeline. So batches
  grow only as far as Redis is slower than the callers. Several sends in flight mean one
  stalled connection holds back only its own commands, not every caller of the process.
* **Each caller gets its own reply or its own error.** An argument Redis cannot take (None, a
  bool, a Decimal) is refused in its caller before anything is queued. A command Redis
  refuses (a script's error, a wrong type) fails that caller only. A pipeline that fails as a
  whole (the connection lost, a timeout) fails each of its commands with a copy of that
  error, as the command alone would have failed: whether it ran is unknown, and nothing is
  retried here (see :mod:`tradeloom.cache.redis`: no silent retries).
* **Order.** A caller's commands run in the order it issued them (it issues the next once the
  last answered). Between callers there is no order, as there was none between pooled
  connections: commands queued together run in queue order, but two sends in flight may
  reach Redis either way round.
* **Cancelling a caller** whose command is still queued withdraws it (never sent); one
  already sent runs, and its reply is dropped, as with a plain call.

It belongs to one event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
from collections import deque
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import DataError

MAX_BATCH = 512
# Two, not four (2026-11-26, order-path bench at 1,100/s, adjacent runs): acknowledgement p50
# 31-74 ms with two in flight against 39-113 with four in every one of four rounds; sixteen
# was worse still. On a machine whose cores are busy, fewer and larger pipelines mean fewer
# wake-ups of Redis and of this loop per command.
MAX_IN_FLIGHT = 2

Argument = str | bytes | int | float


@dataclass(eq=False, slots=True)
class _Queued:
    command: tuple[Argument, ...]
    reply: asyncio.Future[object]


class CommandBatcher:
    """Runs single Redis commands, pipelining those that arrive while others are in flight."""

    def __init__(
        self, redis: Redis, *, max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._redis = redis
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: deque[_Queued] = deque()
        self._in_flight = 0  # lone commands and pipelines sent and not yet answered
        self._senders: set[asyncio.Task[None]] = set()
        self.pipelines = 0  # pipelines sent (not lone commands), for measurements
        self.pipelined = 0  # commands sent in them

    async def execute(self, *command: Argument) -> object:
        """Run one command (``"GET", key``, ``"EVALSHA", sha, 1, key, arg``, ...) and return
        its reply as redis-py parses it; raise its error."""
        _check_arguments(command)
        if self._in_flight < self._max_in_flight and not self._queue:
            self._in_flight += 1
            try:
                return await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
            finally:
                self._in_flight -= 1
                self._send_queued()
        queued = _Queued(command, asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        return await queued.reply  # cancelled while queued: its future is skipped

    async def close(self) -> None:
        """Wait for the pipelines in flight (they end as their replies come or fail; a sender
        never raises: every error goes to the callers waiting on its replies)."""
        if self._senders:
            await asyncio.wait(set(self._senders))

    def _send_queued(self) -> None:
        """Send what queued, one pipeline per free place in flight."""
        while self._queue and self._in_flight < self._max_in_flight:
            batch: list[_Queued] = []
            while self._queue and len(batch) < self._max_batch:
                queued = self._queue.popleft()
                if not queued.reply.done():
                    batch.append(queued)
            if not batch:
                return
            self._in_flight += 1
            # In a context of its own: the pipeline is no one caller's (logs, traces).
            sender = asyncio.create_task(
                self._send(batch), name="redis-pipeline", context=contextvars.Context()
            )
            self._senders.add(sender)
            # A done callback runs even for a task cancelled before it started.
            sender.add_done_callback(functools.partial(self._sent, batch))

    def _sent(self, batch: list[_Queued], sender: asyncio.Task[None]) -> None:
        self._senders.discard(sender)
        self._in_flight -= 1
        for queued in batch:  # only if the sender ended before settling them (cancelled)
            if not queued.reply.done():
                queued.reply.set_exception(RuntimeError("the Redis pipeline was cancelled"))
        self._send_queued()

    async def _send(self, taken: list[_Queued]) -> None:
        batch = [queued for queued in taken if not queued.reply.done()]  # cancelled meanwhile
        if not batch:
            return
        self.pipelines += 1
        self.pipelined += len(batch)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for queued in batch:
                    pipe.execute_command(*queued.command)
                replies: list[object] = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for queued in batch:
                if not queued.reply.done():
                    queued.reply.set_exception(_for_one(exc))
            return
        for queued, reply in zip(batch, replies, strict=True):
            if queued.reply.done():
                continue
            if isinstance(reply, Exception):
                queued.reply.set_exception(reply)
            else:
                queued.reply.set_result(reply)


def _check_arguments(command: tuple[object, ...]) -> None:
    """What redis-py's encoder would refuse, refused here, in its caller: in a pipeline it
    would fail every command of the batch."""
    for argument in command:
        if isinstance(argument, bool) or not isinstance(argument, str | bytes | int | float):
            raise DataError(
                f"invalid Redis argument {argument!r} of type {type(argument).__name__}: "
                "use bytes, str, int or float"
            )


def _for_one(exc: Exception) -> Exception:
    """A copy of a pipeline's failure for one of its callers (so each caller's traceback is
    its own), caused by the failure itself."""
    try:
        one = copy.copy(exc)
    except Exception:
        return exc
    one.__traceback__ = None
    one.__cause__ = exc
    return one

"""Ordered delivery of broker reports in batches: nothing dropped, one account never blocks
the others.

Runs on the event loop only.

* **Fast lane.** ``put`` queues a report; one writer hands everything queued (up to
  ``max_batch`` reports) to the sink in one call, in arrival order, which is the broker's order
  and so each account's order. While a call runs, new reports queue for the next one. The
  writer ends when the queue is empty, so an idle dispatcher costs nothing. Many accounts'
  reports thus share one sink call (one database transaction) instead of one each.
* **A failed batch is split, not retried whole.** Its accounts are halved (each account's
  reports stay together and in order) and each half is tried alone, halving again what still
  fails, down to single accounts. Halves that succeed are delivered at once. An account whose
  reports fail alone moves to the slow lane, with the reports of it queued since.
* **Slow lane.** A writer of the account's own delivers its backlog one report at a time:
  a sink that raises is logged, counted and retried with capped exponential backoff, since
  skipping a report would break the account's order and could lose a fill. When
  ``dead_letter`` is given, a report refused ``dead_letter_after`` times on its own goes there
  instead (e.g. a fill for an order the platform does not know), so one poisoned report cannot
  block its account forever; if the dead letter refuses it too, retrying goes on. Attempts
  within batches are not counted: a failed batch cannot tell whose fault it was. The account's
  new reports queue behind its backlog; when the backlog is empty the account rejoins the fast
  lane. Other accounts keep the fast lane meanwhile.

A sink call that hangs rather than fails holds the fast lane until it returns: the sink is
expected to fail (a database error) rather than wait forever.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import structlog

from tradeloom.broker.reports import BrokerReport

log = structlog.get_logger("tradeloom.broker.dispatch")

ReportSink = Callable[[BrokerReport], Awaitable[None]]
ReportBatchSink = Callable[[Sequence[BrokerReport]], Awaitable[None]]
"""Takes a batch of reports, in order, all or nothing: when it raises, the whole batch is
delivered again later (so it must be idempotent, as the report recorder is)."""

DEFAULT_MAX_BATCH = 200


class AccountDispatcher:
    def __init__(
        self,
        sink: ReportBatchSink,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        retry_delay: float = 0.05,
        retry_max_delay: float = 2.0,
        dead_letter: ReportSink | None = None,
        dead_letter_after: int = 10,
    ) -> None:
        if dead_letter_after < 1:
            raise ValueError(f"dead_letter_after must be at least 1, got {dead_letter_after}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._sink = sink
        self._max_batch = max_batch
        self._retry_delay = retry_delay
        self._retry_max_delay = retry_max_delay
        self._dead_letter = dead_letter
        self._dead_letter_after = dead_letter_after
        self._queue: deque[BrokerReport] = deque()
        self._in_flight = 0
        self._writer: asyncio.Task[None] | None = None
        self._slow: dict[str, deque[BrokerReport]] = {}
        self._slow_writers: dict[str, asyncio.Task[None]] = {}
        self.delivered = 0
        self.failures = 0
        self.dead_lettered = 0

    @property
    def backlog(self) -> int:
        """Reports received and not yet taken by the sink (or the dead letter)."""
        slow = sum(len(backlog) for backlog in self._slow.values())
        return len(self._queue) + self._in_flight + slow

    @property
    def slow_accounts(self) -> frozenset[str]:
        """Accounts whose reports are delivered one at a time after a failure."""
        return frozenset(self._slow)

    def put(self, report: BrokerReport) -> None:
        """Queue ``report`` behind its account's earlier reports. On the loop only."""
        slow = self._slow.get(report.account_id)
        if slow is not None:
            slow.append(report)
            return
        self._queue.append(report)
        if self._writer is None:
            # Writers run in a context of their own: they write every account's reports, not
            # those of the handler that happened to queue the first one (its log context).
            self._writer = asyncio.get_running_loop().create_task(
                self._write_fast(), context=contextvars.Context()
            )

    async def wait_delivered(self) -> None:
        """Return once every report put so far has been taken."""
        while writers := self._running_writers():
            await asyncio.wait(writers)

    async def close(self, within: float) -> None:
        """Deliver what is queued for up to ``within`` seconds, then give up loudly."""
        try:
            async with asyncio.timeout(within):
                await self.wait_delivered()
        except TimeoutError:
            log.error("broker.reports_undelivered_at_stop", reports=self.backlog)
            writers = self._running_writers()
            for writer in writers:
                writer.cancel()
            if writers:
                await asyncio.wait(writers)
            self._queue.clear()

    def _running_writers(self) -> list[asyncio.Task[None]]:
        writers = list(self._slow_writers.values())
        if self._writer is not None:
            writers.append(self._writer)
        return writers

    # -- fast lane --------------------------------------------------------------------------

    async def _write_fast(self) -> None:
        """The one writer of the fast lane: batches of the queue, in order, until it is empty.

        Between the emptiness check and clearing ``_writer`` there is no await, so a report
        put later always finds either this writer still running or none at all.
        """
        try:
            while self._queue:
                count = min(self._max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_flight = count
                if not await self._try_batch(batch):
                    await self._split(_by_account(batch))
        finally:
            self._writer = None
            self._in_flight = 0

    async def _try_batch(self, reports: list[BrokerReport]) -> bool:
        try:
            await self._sink(reports)
        except Exception:
            self.failures += 1
            log.exception(
                "broker.sink_failed",
                reports=len(reports),
                accounts=len({report.account_id for report in reports}),
            )
            return False
        self.delivered += len(reports)
        self._in_flight -= len(reports)
        return True

    async def _split(self, groups: list[list[BrokerReport]]) -> None:
        """``groups`` (one per account, each in order) failed together: try each half of them
        alone, and halve what fails again; an account that fails alone goes slow."""
        if len(groups) == 1:
            self._demote(groups[0])
            return
        middle = len(groups) // 2
        for half in (groups[:middle], groups[middle:]):
            if not await self._try_batch([report for group in half for report in group]):
                await self._split(half)

    def _demote(self, failed: list[BrokerReport]) -> None:
        """Move an account to the slow lane: its failed reports first, then those of it queued
        since, in order. Its reports are all in ``failed`` or in the queue (the fast lane has
        one batch in flight and the account was not slow when that batch was taken), so
        nothing of it is left behind in the fast lane."""
        account = failed[0].account_id
        backlog = deque(failed)
        queued = [report for report in self._queue if report.account_id == account]
        if queued:
            self._queue = deque(r for r in self._queue if r.account_id != account)
            backlog.extend(queued)
        self._in_flight -= len(failed)
        self._slow[account] = backlog
        loop = asyncio.get_running_loop()
        self._slow_writers[account] = loop.create_task(
            self._write_slow(account, backlog), context=contextvars.Context()
        )
        log.warning("broker.account_slow_lane", account_id=account, reports=len(backlog))

    # -- slow lane --------------------------------------------------------------------------

    async def _write_slow(self, account: str, backlog: deque[BrokerReport]) -> None:
        """The writer of one slow account: its backlog one report at a time, then it rejoins
        the fast lane (no await between the emptiness check and leaving, as above)."""
        try:
            while backlog:
                await self._deliver_alone(backlog[0])
                backlog.popleft()
        finally:
            del self._slow[account]
            del self._slow_writers[account]
        log.info("broker.account_fast_lane", account_id=account)

    async def _deliver_alone(self, report: BrokerReport) -> None:
        delay, attempts = self._retry_delay, 0
        while True:
            attempts += 1
            if await self._try_alone(self._sink_one, report, attempts):
                self.delivered += 1
                return
            if await self._dead_lettered(report, attempts):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_delay)

    async def _sink_one(self, report: BrokerReport) -> None:
        await self._sink([report])

    async def _dead_lettered(self, report: BrokerReport, attempts: int) -> bool:
        if self._dead_letter is None or attempts < self._dead_letter_after:
            return False
        if not await self._try_alone(self._dead_letter, report, attempts):
            return False
        self.dead_lettered += 1
        log.error("broker.report_dead_lettered", order_id=report.order_id, attempts=attempts)
        return True

    async def _try_alone(self, sink: ReportSink, report: BrokerReport, attempts: int) -> bool:
        try:
            await sink(report)
        except Exception:
            self.failures += 1
            log.exception(
                "broker.sink_failed",
                account_id=report.account_id,
                order_id=report.order_id,
                report=type(report).__name__,
                attempts=attempts,
            )
            return False
        return True


def _by_account(reports: list[BrokerReport]) -> list[list[BrokerReport]]:
    """``reports`` grouped by account, each group in the order given."""
    groups: dict[str, list[BrokerReport]] = {}
    for report in reports:
        groups.setdefault(report.account_id, []).append(report)
    return list(groups.values())

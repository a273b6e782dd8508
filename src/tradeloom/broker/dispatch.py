"""Ordered delivery of broker reports: one writer per account, nothing dropped.

Runs on the event loop only. ``put`` queues a report behind the account's earlier ones; a task
per account with a backlog hands them to the sink one at a time, in order, and ends when the
backlog is empty (so idle accounts cost nothing). Accounts never wait for each other.

A sink that raises is logged, counted and retried with capped exponential backoff: skipping a
report would break per-account order and lose a fill. When ``dead_letter`` is given, a report
the sink refused ``dead_letter_after`` times goes there instead (e.g. a fill for an order the
platform does not know), so one poisoned report cannot block its account forever; if the dead
letter refuses it too, retrying goes on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from tradeloom.broker.reports import BrokerReport

log = structlog.get_logger("tradeloom.broker.dispatch")

ReportSink = Callable[[BrokerReport], Awaitable[None]]


class AccountDispatcher:
    def __init__(
        self,
        sink: ReportSink,
        *,
        retry_delay: float = 0.05,
        retry_max_delay: float = 2.0,
        dead_letter: ReportSink | None = None,
        dead_letter_after: int = 10,
    ) -> None:
        if dead_letter_after < 1:
            raise ValueError(f"dead_letter_after must be at least 1, got {dead_letter_after}")
        self._sink = sink
        self._retry_delay = retry_delay
        self._retry_max_delay = retry_max_delay
        self._dead_letter = dead_letter
        self._dead_letter_after = dead_letter_after
        self._backlogs: dict[str, deque[BrokerReport]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self.delivered = 0
        self.failures = 0
        self.dead_lettered = 0

    @property
    def backlog(self) -> int:
        """Reports received and not yet taken by the sink (or the dead letter)."""
        return sum(len(backlog) for backlog in self._backlogs.values())

    def put(self, report: BrokerReport) -> None:
        """Queue ``report`` behind its account's earlier reports. On the loop only."""
        account = report.account_id
        backlog = self._backlogs.get(account)
        if backlog is None:
            backlog = self._backlogs[account] = deque()
            writer = asyncio.get_running_loop().create_task(self._write(account, backlog))
            self._writers[account] = writer
        backlog.append(report)

    async def wait_delivered(self) -> None:
        """Return once every report put so far has been taken."""
        while self._writers:
            await asyncio.wait(list(self._writers.values()))

    async def close(self, within: float) -> None:
        """Deliver what is queued for up to ``within`` seconds, then give up loudly."""
        try:
            async with asyncio.timeout(within):
                await self.wait_delivered()
        except TimeoutError:
            log.error("broker.reports_undelivered_at_stop", reports=self.backlog)
            for writer in list(self._writers.values()):
                writer.cancel()

    async def _write(self, account: str, backlog: deque[BrokerReport]) -> None:
        """The single writer of one account: delivers its backlog in order, then ends.

        Between the emptiness check and removing itself there is no await, so a report put
        later always finds either this writer still running or none at all.
        """
        while backlog:
            await self._deliver(backlog[0])
            backlog.popleft()
        del self._backlogs[account]
        del self._writers[account]

    async def _deliver(self, report: BrokerReport) -> None:
        delay, attempts = self._retry_delay, 0
        while True:
            attempts += 1
            if await self._try(self._sink, report, attempts):
                self.delivered += 1
                return
            if await self._dead_lettered(report, attempts):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_delay)

    async def _dead_lettered(self, report: BrokerReport, attempts: int) -> bool:
        if self._dead_letter is None or attempts < self._dead_letter_after:
            return False
        if not await self._try(self._dead_letter, report, attempts):
            return False
        self.dead_lettered += 1
        log.error("broker.report_dead_lettered", order_id=report.order_id, attempts=attempts)
        return True

    async def _try(self, sink: ReportSink, report: BrokerReport, attempts: int) -> bool:
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

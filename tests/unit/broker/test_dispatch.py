"""The report dispatcher: many accounts' reports share one sink call, each account keeps the
broker's order, and an account whose reports the sink refuses is delivered apart (one report
at a time, dead letter after N attempts) while the others keep being batched.

Reports are put synchronously, so everything put before the test yields is queued when the
writer first runs: batches are deterministic. No sleeps: conditions are polled (``eventually``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers import eventually
from tradeloom.broker.dispatch import AccountDispatcher
from tradeloom.broker.reports import BrokerFill, BrokerReport

START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


def fill(account: str, n: int, order: str = "o") -> BrokerFill:
    return BrokerFill(
        order_id=f"{account}-{order}",
        account_id=account,
        fill_id=f"{account}-{order}-F{n}",
        quantity=Decimal(1),
        price=Decimal("100.01"),
        filled_at=START,
        cumulative_quantity=Decimal(n),
        leaves_quantity=Decimal(1000 - n),
    )


@dataclass
class BatchSink:
    """Records every call; refuses any batch holding a ``poisoned`` order; ``gate``, when set,
    holds every call until it is opened."""

    calls: list[list[BrokerReport]] = field(default_factory=list)
    delivered: list[BrokerReport] = field(default_factory=list)
    poisoned: set[str] = field(default_factory=set)
    gate: asyncio.Event | None = None
    refused: int = 0

    async def __call__(self, reports: Sequence[BrokerReport]) -> None:
        self.calls.append(list(reports))
        if self.gate is not None:
            await self.gate.wait()
        if any(report.order_id in self.poisoned for report in reports):
            self.refused += 1
            raise RuntimeError("the database refused the batch")
        await asyncio.sleep(0)
        self.delivered.extend(reports)

    def of(self, account: str) -> list[BrokerReport]:
        return [report for report in self.delivered if report.account_id == account]


@dataclass
class DeadLetter:
    parked: list[BrokerReport] = field(default_factory=list)

    async def __call__(self, report: BrokerReport) -> None:
        self.parked.append(report)


def dispatcher(sink: BatchSink, **options: Any) -> AccountDispatcher:
    options.setdefault("retry_delay", 0.001)
    options.setdefault("retry_max_delay", 0.02)
    return AccountDispatcher(sink, **options)


async def test_many_accounts_share_one_call_in_the_brokers_order() -> None:
    sink = BatchSink()
    reports = [fill(account, n) for n in range(1, 4) for account in ("A", "B", "C")]
    dispatch = dispatcher(sink)
    for report in reports:
        dispatch.put(report)
    await dispatch.wait_delivered()
    assert sink.calls == [reports]
    assert (dispatch.delivered, dispatch.failures, dispatch.backlog) == (9, 0, 0)


async def test_reports_put_while_a_batch_is_written_go_in_the_next_call() -> None:
    gate = asyncio.Event()
    sink = BatchSink(gate=gate)
    dispatch = dispatcher(sink, max_batch=4)
    first = [fill("A", 1), fill("B", 1)]
    for report in first:
        dispatch.put(report)
    await eventually(lambda: len(sink.calls) == 1, 5.0, message="the first call")
    later = [fill(account, n) for n in range(2, 5) for account in ("A", "B")]
    for report in later:
        dispatch.put(report)
    assert dispatch.backlog == 8, "queued and in-flight reports are all in the backlog"
    gate.set()
    await dispatch.wait_delivered()
    assert sink.calls == [first, later[:4], later[4:]], "at most max_batch per call, in order"
    for account in ("A", "B"):
        assert sink.of(account) == [fill(account, n) for n in range(1, 5)]
    assert dispatch.backlog == 0


async def test_a_refused_account_goes_slow_while_the_others_keep_the_fast_lane() -> None:
    sink = BatchSink(poisoned={"A-o"})
    dispatch = dispatcher(sink)
    accounts = ("A", "B", "C", "D", "E", "F", "G", "H")
    for account in accounts:
        dispatch.put(fill(account, 1))
        dispatch.put(fill(account, 2))
    await eventually(lambda: len(sink.delivered) == 14, 5.0, message="the healthy accounts")
    assert dispatch.slow_accounts == {"A"}
    batched = [call for call in sink.calls if len({r.account_id for r in call}) > 1]
    fast = [call for call in sink.calls if any(r.account_id != "A" for r in call)]
    assert len(fast) <= 7, f"split by halves, not account by account: {fast}"
    assert batched, "the healthy accounts are still delivered in shared calls"
    dispatch.put(fill("B", 3))  # a healthy account stays fast meanwhile
    dispatch.put(fill("A", 3))  # queues behind A's refused reports
    await eventually(lambda: fill("B", 3) in sink.delivered, 5.0, message="B's next report")
    assert sink.of("A") == []

    sink.poisoned.clear()  # the cause is fixed: A drains in order, then rejoins the fast lane
    await dispatch.wait_delivered()
    assert sink.of("A") == [fill("A", n) for n in (1, 2, 3)]
    assert dispatch.slow_accounts == frozenset()
    assert [sink.calls[-n] for n in (3, 2, 1)] == [[fill("A", n)] for n in (1, 2, 3)]
    for account in accounts[1:]:
        assert sink.of(account)[:2] == [fill(account, 1), fill(account, 2)]
    assert dispatch.failures == sink.refused
    assert (dispatch.delivered, dispatch.dead_lettered) == (18, 0)

    dispatch.put(fill("A", 4))
    dispatch.put(fill("B", 4))
    await dispatch.wait_delivered()
    assert sink.calls[-1] == [fill("A", 4), fill("B", 4)], "A is batched again"


async def test_reports_queued_before_the_refusal_follow_the_account_to_the_slow_lane() -> None:
    gate = asyncio.Event()
    sink = BatchSink(poisoned={"A-o"}, gate=gate)
    dispatch = dispatcher(sink)
    dispatch.put(fill("A", 1))
    await eventually(lambda: len(sink.calls) == 1, 5.0, message="the first call")
    for report in (fill("B", 1), fill("A", 2), fill("B", 2), fill("A", 3)):
        dispatch.put(report)
    gate.set()
    await eventually(lambda: len(sink.of("B")) == 2, 5.0, message="B delivered")
    assert dispatch.slow_accounts == {"A"}
    assert dispatch.backlog == 3
    sink.poisoned.clear()
    await dispatch.wait_delivered()
    assert sink.of("A") == [fill("A", n) for n in (1, 2, 3)]


async def test_a_report_refused_n_times_alone_goes_to_the_dead_letter() -> None:
    sink, dead = BatchSink(poisoned={"A-bad"}), DeadLetter()
    dispatch = dispatcher(sink, dead_letter=dead, dead_letter_after=3)
    poisoned = fill("A", 1, order="bad")
    for report in (poisoned, fill("A", 2), fill("B", 1)):
        dispatch.put(report)
    await dispatch.wait_delivered()
    assert dead.parked == [poisoned]
    assert sink.of("A") == [fill("A", 2)], "the account's later report still goes through"
    assert sink.of("B") == [fill("B", 1)]
    alone = [call for call in sink.calls if call == [poisoned]]
    assert len(alone) == 3, "attempts within batches do not count towards the dead letter"
    # the batch of three, then A's two reports, then the poisoned one three times alone
    assert (dispatch.failures, dispatch.dead_lettered, dispatch.delivered) == (5, 1, 2)
    assert dispatch.slow_accounts == frozenset()


async def test_a_dead_letter_that_refuses_too_keeps_the_report_retrying() -> None:
    sink = BatchSink(poisoned={"A-bad"})
    refusals = 0

    async def refusing_dead_letter(report: BrokerReport) -> None:
        nonlocal refusals
        refusals += 1
        raise RuntimeError("dead letter topic unavailable")

    dispatch = dispatcher(sink, dead_letter=refusing_dead_letter, dead_letter_after=2)
    dispatch.put(fill("A", 1, order="bad"))
    await eventually(lambda: refusals >= 3, 5.0, message="dead letter attempts")
    assert dispatch.dead_lettered == 0
    assert dispatch.backlog == 1, "nothing is dropped"
    sink.poisoned.clear()
    await dispatch.wait_delivered()
    assert sink.delivered == [fill("A", 1, order="bad")]


async def test_without_a_dead_letter_a_refused_report_is_retried_until_taken() -> None:
    sink = BatchSink(poisoned={"A-o"})
    dispatch = dispatcher(sink, dead_letter_after=1)
    dispatch.put(fill("A", 1))
    await eventually(lambda: sink.refused >= 10, 5.0, message="retries")
    assert dispatch.backlog == 1
    sink.poisoned.clear()
    await dispatch.wait_delivered()
    assert sink.delivered == [fill("A", 1)]
    assert dispatch.failures == sink.refused


async def test_close_delivers_what_is_queued() -> None:
    sink = BatchSink()
    dispatch = dispatcher(sink)
    for n in range(1, 4):
        dispatch.put(fill("A", n))
    await dispatch.close(within=2.0)
    assert sink.delivered == [fill("A", n) for n in range(1, 4)]


async def test_close_gives_up_after_within_and_leaves_no_writer_behind() -> None:
    sink = BatchSink(gate=asyncio.Event())  # never opened: the sink hangs
    dispatch = dispatcher(sink)
    dispatch.put(fill("A", 1))
    dispatch.put(fill("B", 1))
    await eventually(lambda: len(sink.calls) == 1, 5.0, message="the first call")
    dispatch.put(fill("A", 2))
    await dispatch.close(within=0.05)
    assert sink.delivered == []
    assert dispatch.backlog == 0
    await asyncio.wait_for(dispatch.wait_delivered(), 1.0)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="dead_letter_after"):
        AccountDispatcher(BatchSink(), dead_letter_after=0)
    with pytest.raises(ValueError, match="max_batch"):
        AccountDispatcher(BatchSink(), max_batch=0)

"""The broker gateway: futures resolved on the loop from a foreign thread, nothing a broker
reports is lost, per-account order in batches, a circuit breaker and an adaptive timeout.

``ThreadedBroker`` is a scripted adapter: the test says what to report and it is reported from
the broker's own thread, like a broker SDK would. No sleeps: conditions are polled with a
deadline (``eventually``), and timeouts are short (50 ms).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers import eventually
from tradeloom.broker.adapter import (
    BrokerTimeout,
    BrokerUnavailable,
    OpenOrdersCallback,
    ReportCallback,
)
from tradeloom.broker.gateway import BrokerGateway
from tradeloom.broker.reports import (
    AmendRequest,
    BrokerAccepted,
    BrokerCanceled,
    BrokerFill,
    BrokerReplaced,
    BrokerReport,
    CancelRequest,
    OpenOrders,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock
from tradeloom.resilience.circuit_breaker import CircuitBreaker, CircuitState

D = Decimal
START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


_Answer = tuple[OpenOrdersCallback, OpenOrders]


class ThreadedBroker:
    """An adapter whose reports and answers come from its own thread, when the test says so."""

    def __init__(self) -> None:
        self.requests: list[object] = []
        self.queries: list[OpenOrdersCallback] = []
        self.failing = False
        self._outbox: queue.Queue[BrokerReport | _Answer | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.callback_threads: set[str] = set()

    def start(self, on_report: ReportCallback) -> None:
        def run() -> None:
            while (item := self._outbox.get()) is not None:
                self.callback_threads.add(threading.current_thread().name)
                if isinstance(item, tuple):
                    on_answer, answer = item
                    on_answer(answer)
                else:
                    on_report(item)

        self._thread = threading.Thread(target=run, name="fake-broker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._outbox.put(None)
            self._thread.join()

    def _take(self, request: object) -> None:
        if self.failing:
            raise ConnectionError("broker link down")
        self.requests.append(request)

    def submit(self, request: SubmitOrder) -> None:
        self._take(request)

    def cancel(self, request: CancelRequest) -> None:
        self._take(request)

    def amend(self, request: AmendRequest) -> None:
        self._take(request)

    def query_open_orders(self, on_answer: OpenOrdersCallback) -> None:
        self._take("open orders")
        self.queries.append(on_answer)

    def on_price(self, update: PriceUpdate) -> None:
        pass

    def report(self, *reports: BrokerReport) -> None:
        for item in reports:
            self._outbox.put(item)

    def answer(self, *order_ids: str) -> None:
        """Answer the oldest open-orders query, behind the reports queued before."""
        self._outbox.put((self.queries.pop(0), OpenOrders(order_ids=order_ids)))


@dataclass
class Sink:
    """Collects delivered reports, a batch per call. ``fail_times`` refuses that many calls;
    a call holding a ``poisoned`` order is refused; ``gate``, when set, holds every call."""

    delivered: list[BrokerReport] = field(default_factory=list)
    calls: list[list[BrokerReport]] = field(default_factory=list)
    poisoned: set[str] = field(default_factory=set)
    gate: asyncio.Event | None = None
    fail_times: int = 0

    async def __call__(self, reports: Sequence[BrokerReport]) -> None:
        self.calls.append(list(reports))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("database unavailable")
        if any(report.order_id in self.poisoned for report in reports):
            raise RuntimeError("a report the database refuses")
        await asyncio.sleep(0)  # let other work interleave
        self.delivered.extend(reports)


def submit_request(order_id: str, account: str = "acct-1") -> SubmitOrder:
    return SubmitOrder(
        order_id=order_id,
        account_id=account,
        symbol="ACME",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=D(300),
        time_in_force=TimeInForce.DAY,
    )


def accepted(order_id: str, account: str = "acct-1") -> BrokerAccepted:
    return BrokerAccepted(order_id=order_id, account_id=account, broker_order_id=f"B-{order_id}")


def fill(order_id: str, n: int, account: str = "acct-1") -> BrokerFill:
    return BrokerFill(
        order_id=order_id,
        account_id=account,
        fill_id=f"{order_id}-F{n}",
        quantity=D(100),
        price=D("100.01"),
        filled_at=START,
        cumulative_quantity=D(100 * n),
        leaves_quantity=D(300 - 100 * n),
    )


def state_of(breaker: CircuitBreaker) -> CircuitState:
    """Read through a call so the type checker does not narrow one reading into the next."""
    return breaker.state


@dataclass
class Rig:
    gateway: BrokerGateway
    broker: ThreadedBroker
    sink: Sink
    clock: ManualClock
    breaker: CircuitBreaker

    async def sent(self, count: int) -> None:
        await eventually(lambda: len(self.broker.requests) >= count, 5.0, message="requests")

    async def delivered(self, count: int) -> None:
        await eventually(
            lambda: len(self.sink.delivered) >= count,
            5.0,
            message=lambda: f"{len(self.sink.delivered)} of {count} delivered",
        )


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    """Builds started gateways (options go to ``BrokerGateway``, but ``failure_threshold``
    to the breaker) and stops them afterwards."""
    started: list[BrokerGateway] = []

    async def make(**options: Any) -> Rig:
        clock = ManualClock(START)
        threshold = options.pop("failure_threshold", 3)
        breaker = CircuitBreaker(failure_threshold=threshold, reset_timeout=30.0, clock=clock)
        broker, sink = ThreadedBroker(), Sink()
        options.setdefault("sink_retry_delay", 0.001)
        gateway = BrokerGateway(broker, sink, breaker=breaker, clock=clock, **options)
        await gateway.start()
        started.append(gateway)
        return Rig(gateway, broker, sink, clock, breaker)

    yield make
    for gateway in started:
        await gateway.stop(drain_within=2.0)


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    """A gateway with a generous timeout: for tests about answers and delivery."""
    return await make_rig(timeout=5.0)


@pytest.fixture
async def quick_rig(make_rig: MakeRig) -> Rig:
    """A gateway that times out after 50 ms: for tests about timeouts."""
    return await make_rig(timeout=0.05)


async def test_reports_from_a_foreign_thread_resolve_the_waiting_call(rig: Rig) -> None:
    pending = asyncio.create_task(rig.gateway.submit(submit_request("o-1")))
    await rig.sent(1)
    rig.broker.report(accepted("o-1"))
    assert await pending == accepted("o-1")
    assert rig.broker.callback_threads == {"fake-broker"}
    await rig.delivered(1)
    assert rig.sink.delivered == [accepted("o-1")]


async def test_cancel_and_amend_wait_for_their_own_answers(rig: Rig) -> None:
    cancel = CancelRequest(order_id="o-1", account_id="acct-1")
    amend = AmendRequest(order_id="o-2", account_id="acct-1", quantity=D(5))
    canceling = asyncio.create_task(rig.gateway.cancel(cancel))
    amending = asyncio.create_task(rig.gateway.amend(amend))
    await rig.sent(2)
    replaced = BrokerReplaced(order_id="o-2", account_id="acct-1", quantity=D(5))
    canceled = BrokerCanceled(order_id="o-1", account_id="acct-1", reason="by request")
    rig.broker.report(fill("o-1", 1), replaced, canceled)
    assert await canceling == canceled
    assert await amending == replaced
    await rig.delivered(3)


async def test_a_late_ack_and_fills_after_the_timeout_still_reach_the_sink(
    quick_rig: Rig,
) -> None:
    rig = quick_rig
    with pytest.raises(BrokerTimeout):
        await rig.gateway.submit(submit_request("o-1"))
    late: list[BrokerReport] = [accepted("o-1"), *(fill("o-1", n) for n in (1, 2, 3))]
    rig.broker.report(*late)
    await rig.delivered(4)
    assert rig.sink.delivered == late


async def test_second_and_third_partial_fills_are_delivered(rig: Rig) -> None:
    pending = asyncio.create_task(rig.gateway.submit(submit_request("o-1")))
    await rig.sent(1)
    rig.broker.report(accepted("o-1"), fill("o-1", 1))
    assert await pending == accepted("o-1")
    rig.broker.report(fill("o-1", 2), fill("o-1", 3))
    await rig.delivered(4)
    assert [r for r in rig.sink.delivered if isinstance(r, BrokerFill)] == [
        fill("o-1", n) for n in (1, 2, 3)
    ]


async def test_each_account_keeps_its_order_while_accounts_interleave(rig: Rig) -> None:
    expected = {
        account: [fill(f"{account}-o", n, account) for n in range(1, 4)] for account in "AB"
    }
    interleaved = [report for pair in zip(*expected.values(), strict=True) for report in pair]
    for _ in range(20):
        rig.broker.report(*interleaved)
    await rig.delivered(len(interleaved) * 20)
    for account, reports in expected.items():
        mine = [r for r in rig.sink.delivered if r.account_id == account]
        assert mine == reports * 20, f"account {account} out of order"


async def test_reports_of_many_accounts_share_a_sink_call(rig: Rig) -> None:
    rig.sink.gate = asyncio.Event()
    rig.broker.report(fill("first", 1, "A"))
    await eventually(lambda: len(rig.sink.calls) == 1, 5.0, message="the first call")
    later = [fill(f"{account}-o", n, account) for n in (1, 2) for account in "BCD"]
    rig.broker.report(*later)
    await eventually(lambda: rig.gateway.reports_received == 7, 5.0, message="received")
    rig.sink.gate.set()
    await rig.delivered(7)
    assert rig.sink.calls == [[fill("first", 1, "A")], later]


async def test_a_refused_account_does_not_hold_up_another(rig: Rig) -> None:
    rig.sink.poisoned.add("a")
    rig.broker.report(fill("a", 1, "A"), fill("b", 1, "B"), fill("b", 2, "B"))
    await rig.delivered(2)
    assert [r.account_id for r in rig.sink.delivered] == ["B", "B"]
    rig.broker.report(fill("a", 2, "A"), fill("b", 3, "B"))
    await rig.delivered(3)
    assert rig.sink.delivered[-1] == fill("b", 3, "B")
    rig.sink.poisoned.clear()
    await rig.delivered(5)
    assert [r for r in rig.sink.delivered if r.account_id == "A"] == [
        fill("a", 1, "A"),
        fill("a", 2, "A"),
    ]


async def test_a_failing_sink_is_retried_and_counted_never_dropped(rig: Rig) -> None:
    rig.sink.fail_times = 2
    rig.broker.report(fill("o-1", 1), fill("o-1", 2))
    await rig.delivered(2)
    assert rig.sink.delivered == [fill("o-1", 1), fill("o-1", 2)]
    assert rig.gateway.sink_failures == 2
    assert rig.gateway.reports_delivered == 2


async def test_a_report_the_sink_keeps_refusing_goes_to_the_dead_letter(
    make_rig: MakeRig,
) -> None:
    dead: list[BrokerReport] = []

    async def dead_letter(report: BrokerReport) -> None:
        dead.append(report)

    rig = await make_rig(dead_letter=dead_letter, dead_letter_after=3)
    rig.sink.poisoned.add("unknown")
    rig.broker.report(fill("unknown", 1), fill("o-1", 1))
    await rig.delivered(1)
    assert dead == [fill("unknown", 1)]
    assert rig.sink.delivered == [fill("o-1", 1)]
    # refused once in the fast lane (alone or with o-1), then three times on its own
    assert (rig.gateway.sink_failures, rig.gateway.reports_dead_lettered) == (4, 1)


async def test_repeated_timeouts_open_the_breaker_then_it_half_opens(make_rig: MakeRig) -> None:
    rig = await make_rig(timeout=0.2)  # long enough for the trial to be answered
    for n in range(3):
        with pytest.raises(BrokerTimeout):
            await rig.gateway.submit(submit_request(f"o-{n}"))
    assert state_of(rig.breaker) is CircuitState.OPEN
    with pytest.raises(BrokerUnavailable):
        await rig.gateway.submit(submit_request("refused"))
    assert len(rig.broker.requests) == 3, "an open breaker must not reach the broker"

    rig.clock.advance(timedelta(seconds=30))
    assert state_of(rig.breaker) is CircuitState.HALF_OPEN
    trial = asyncio.create_task(rig.gateway.submit(submit_request("trial")))
    await rig.sent(4)
    with pytest.raises(BrokerUnavailable):  # only one trial at a time
        await rig.gateway.submit(submit_request("second"))
    rig.broker.report(accepted("trial"))
    assert await trial == accepted("trial")
    assert state_of(rig.breaker) is CircuitState.CLOSED


async def test_an_adapter_that_raises_counts_as_a_failure(rig: Rig) -> None:
    rig.broker.failing = True
    for n in range(3):
        with pytest.raises(BrokerUnavailable, match="broker link down"):
            await rig.gateway.submit(submit_request(f"o-{n}"))
    assert state_of(rig.breaker) is CircuitState.OPEN


async def test_the_timeout_rises_when_p95_latency_passes_two_seconds(make_rig: MakeRig) -> None:
    rig = await make_rig()  # the defaults: 10 s, 30 s past a p95 of 2 s
    assert rig.gateway.current_timeout == 10.0

    async def answered_after(order_id: str, seconds: float) -> None:
        pending = asyncio.create_task(rig.gateway.submit(submit_request(order_id)))
        await rig.sent(len(rig.broker.requests) + 1)
        rig.clock.advance(timedelta(seconds=seconds))
        rig.broker.report(accepted(order_id))
        await pending

    for n in range(19):
        await answered_after(f"fast-{n}", 0.5)
    assert rig.gateway.current_timeout == 10.0
    for n in range(2):
        await answered_after(f"slow-{n}", 3.0)
    assert rig.gateway.latency_p95 == 3.0
    assert rig.gateway.current_timeout == 30.0


async def test_stop_delivers_what_was_already_reported() -> None:
    clock = ManualClock(START)
    broker, sink = ThreadedBroker(), Sink()
    breaker = CircuitBreaker(3, 30.0, clock=clock)
    gateway = BrokerGateway(broker, sink, breaker=breaker, clock=clock)
    await gateway.start()
    broker.report(*(fill("o-1", n) for n in (1, 2, 3)))
    await gateway.stop()
    assert sink.delivered == [fill("o-1", n) for n in (1, 2, 3)]
    with pytest.raises(BrokerUnavailable):
        await gateway.submit(submit_request("after-stop"))


async def test_stop_turns_calls_still_waiting_into_timeouts(make_rig: MakeRig) -> None:
    rig = await make_rig(timeout=5.0)
    pending = asyncio.create_task(rig.gateway.submit(submit_request("o-1")))
    await rig.sent(1)
    await rig.gateway.stop()
    with pytest.raises(BrokerTimeout, match="stopped before an answer"):
        await pending


async def test_open_orders_are_answered_on_the_loop_behind_earlier_reports(rig: Rig) -> None:
    asking = asyncio.create_task(rig.gateway.open_orders())
    await rig.sent(1)
    rig.broker.report(accepted("o-1"), accepted("o-2"), fill("o-2", 3))
    rig.broker.answer("o-1")
    answer = await asking
    assert answer.orders == OpenOrders(order_ids=("o-1",))
    assert answer.reports_before == 3, "reports sent before the answer came before it"
    assert await rig.gateway.wait_taken(answer.reports_before, 5.0) == frozenset()
    assert [r.order_id for r in rig.sink.delivered] == ["o-1", "o-2", "o-2"]
    assert rig.broker.callback_threads == {"fake-broker"}


async def test_waiting_for_reports_before_an_answer_ignores_those_after_it(rig: Rig) -> None:
    rig.sink.poisoned = {"o-late"}  # refused, and retried, for as long as the test runs
    asking = asyncio.create_task(rig.gateway.open_orders())
    await rig.sent(1)
    rig.broker.report(accepted("o-1"))
    rig.broker.answer("o-1")
    rig.broker.report(accepted("o-late", account="acct-2"))
    answer = await asking
    await eventually(lambda: rig.gateway.reports_received == 2, 5.0, message="the later one")
    assert await rig.gateway.wait_taken(answer.reports_before, 5.0) == frozenset()
    assert rig.gateway.sink_failures >= 1, "the later report is still being retried"
    rig.sink.poisoned.clear()


async def test_a_report_before_the_answer_still_in_transit_is_named_when_time_is_up(
    rig: Rig,
) -> None:
    rig.sink.poisoned = {"o-stuck"}
    asking = asyncio.create_task(rig.gateway.open_orders())
    await rig.sent(1)
    rig.broker.report(accepted("o-stuck"), accepted("o-2", account="acct-2"))
    rig.broker.answer("o-2")
    answer = await asking
    assert await rig.gateway.wait_taken(answer.reports_before, 0.1) == {"o-stuck"}
    assert [r.order_id for r in rig.sink.delivered] == ["o-2"]
    rig.sink.poisoned.clear()


async def test_an_unanswered_query_times_out_without_touching_the_breaker(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(timeout=5.0, query_timeout=0.05)
    for _ in range(3):  # the rig's breaker opens after 3 failures of order requests
        with pytest.raises(BrokerTimeout):
            await rig.gateway.open_orders()
    rig.broker.answer("o-1")  # a late answer is dropped quietly
    assert rig.gateway.query_failures == 3
    assert state_of(rig.breaker) is CircuitState.CLOSED


async def test_failing_queries_never_open_the_breaker_at_its_default_threshold(
    make_rig: MakeRig,
) -> None:
    threshold = CircuitBreaker(clock=ManualClock(START)).failure_threshold  # as in production
    rig = await make_rig(timeout=5.0, failure_threshold=threshold)
    rig.broker.failing = True
    for _ in range(threshold * 2):
        with pytest.raises(BrokerUnavailable, match="refused the query"):
            await rig.gateway.open_orders()
    rig.broker.failing = False
    assert state_of(rig.breaker) is CircuitState.CLOSED
    placing = asyncio.create_task(rig.gateway.submit(submit_request("o-1")))
    await rig.sent(1)
    rig.broker.report(accepted("o-1"))
    assert await placing == accepted("o-1"), "orders still reach the broker"
    assert rig.gateway.query_failures == threshold * 2


async def test_a_query_neither_takes_nor_spoils_the_half_open_trial(rig: Rig) -> None:
    rig.broker.failing = True
    for n in range(3):
        with pytest.raises(BrokerUnavailable):
            await rig.gateway.submit(submit_request(f"down-{n}"))
    rig.broker.failing = False
    rig.clock.advance(timedelta(seconds=30))  # half-open: one trial may go
    asking = asyncio.create_task(rig.gateway.open_orders())  # asked even with the breaker open
    await rig.sent(1)
    rig.broker.answer()
    assert (await asking).orders == OpenOrders(order_ids=())
    assert state_of(rig.breaker) is CircuitState.HALF_OPEN, "the answer decided nothing"
    trial = asyncio.create_task(rig.gateway.submit(submit_request("o-1")))
    await rig.sent(2)
    rig.broker.report(accepted("o-1"))
    assert await trial == accepted("o-1"), "the trial was still there for an order to take"
    assert state_of(rig.breaker) is CircuitState.CLOSED


async def test_a_query_the_adapter_cannot_take_is_unavailable(rig: Rig) -> None:
    rig.broker.failing = True
    with pytest.raises(BrokerUnavailable, match="refused the query"):
        await rig.gateway.open_orders()


async def test_stop_turns_a_query_still_waiting_into_a_timeout(make_rig: MakeRig) -> None:
    rig = await make_rig(timeout=5.0)
    asking = asyncio.create_task(rig.gateway.open_orders())
    await rig.sent(1)
    await rig.gateway.stop()
    with pytest.raises(BrokerTimeout, match="stopped before an answer"):
        await asking

"""The execution engine in batches: one claim per batch, commands reach the broker in batch
order, nothing is sent twice, a timeout counts as sent, an unreachable broker dead-letters.

``ScriptedBroker`` takes requests in order and answers them at once or when the test says so
(from the loop's thread, through the gateway's thread seam all the same). Reports go through
the real gateway to the real recorder, so what the broker answered ends in the outbox.
Reconciliation at start has tests of its own (``test_reconcile.py``); these engines skip it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete, select

from tests.helpers import eventually
from tests.unit.execution.scripted_broker import ScriptedBroker
from tradeloom.broker.adapter import BrokerUnavailable
from tradeloom.broker.gateway import BrokerGateway
from tradeloom.broker.reports import SubmitOrder
from tradeloom.domain.events import (
    AnyPayload,
    DeadLettered,
    Event,
    OrderAmendRequested,
    OrderCancelRejected,
    OrderCancelRequested,
    OrderReplaceRejected,
    OrderSubmitted,
    decode_event,
    new_event,
)
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock
from tradeloom.execution.engine import ExecutionEngine
from tradeloom.execution.reports import ReportRecorder
from tradeloom.messaging.memory import MemoryBus
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.resilience.circuit_breaker import CircuitBreaker
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import broker_orders, outbox

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


@dataclass
class Desk:
    """An engine over a started gateway, for one account of its own."""

    database: Database
    engine: ExecutionEngine
    gateway: BrokerGateway
    broker: ScriptedBroker
    breaker: CircuitBreaker
    clock: ManualClock
    account: str
    bus: MemoryBus = field(default_factory=MemoryBus)

    def order(self, name: str) -> str:
        return f"{self.account}-{name}"

    def command(self, payload: AnyPayload, account: str | None = None) -> Event:
        return new_event(
            payload,
            occurred_at=NOW,
            correlation_id=f"corr-{self.account}",
            account_id=account or self.account,
        )

    def submitted(self, name: str, account: str | None = None) -> Event:
        payload = OrderSubmitted(
            order_id=self.order(name),
            client_order_id=f"c-{name}",
            symbol="AAPL",
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=Decimal(10),
            time_in_force=TimeInForce.GTC,
            limit_price=Decimal("187.25"),
        )
        return self.command(payload, account)

    def cancel(self, name: str) -> Event:
        return self.command(OrderCancelRequested(order_id=self.order(name)))

    def amend(self, name: str) -> Event:
        return self.command(OrderAmendRequested(order_id=self.order(name), quantity=Decimal(5)))

    def sent(self) -> list[tuple[str, str]]:
        """What reached the broker, as (request kind, order name)."""
        prefix = len(self.account) + 1
        return [(type(r).__name__, r.order_id[prefix:]) for r in self.broker.requests]

    async def published(self, *accounts: str) -> list[tuple[str, AnyPayload]]:
        """The accounts' outbox (default: the desk's), in sequence order."""
        query = (
            select(outbox.c.topic, outbox.c.payload)
            .where(outbox.c.key.in_(accounts or (self.account,)))
            .order_by(outbox.c.sequence)
        )
        async with self.database.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(topic, decode_event(payload).payload) for topic, payload in rows]

    async def claimed(self) -> set[str]:
        query = select(broker_orders.c.order_id).where(
            broker_orders.c.order_id.like(f"{self.account}-%")
        )
        async with self.database.connect() as conn:
            return set((await conn.execute(query)).scalars())


@pytest.fixture
async def desk(database: Database, unique: str) -> AsyncIterator[Desk]:
    clock = ManualClock(NOW)
    broker = ScriptedBroker()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=30.0, clock=clock)
    recorder = ReportRecorder(database, Outbox(clock), clock)
    gateway = BrokerGateway(broker, recorder.record_many, breaker=breaker, clock=clock)
    await gateway.start()
    bus = MemoryBus()
    engine = ExecutionEngine(bus, database, Outbox(clock), gateway, clock, reconcile_at_start=False)
    yield Desk(database, engine, gateway, broker, breaker, clock, f"acc-{unique}", bus)
    await engine.stop()
    await bus.close()
    await gateway.stop(drain_within=2.0)


def kinds(events: Sequence[tuple[str, AnyPayload]]) -> list[str]:
    return [type(payload).__name__ for _, payload in events]


async def test_a_batch_claims_and_sends_each_order_once(desk: Desk) -> None:
    other = f"{desk.account}-b"
    batch = [desk.submitted("o1"), desk.submitted("o2", other), desk.submitted("o3")]
    await desk.engine.handle_batch(batch)
    assert desk.sent() == [("SubmitOrder", name) for name in ("o1", "o2", "o3")]
    assert await desk.claimed() == {desk.order(name) for name in ("o1", "o2", "o3")}
    assert (desk.engine.sent, desk.engine.skipped) == (3, 0)

    await desk.engine.handle_batch(batch)  # the bus delivering the batch again
    await desk.engine.handle_batch(batch[1:2])  # and one of it alone
    assert len(desk.broker.requests) == 3, "a redelivered command must not reach the broker"
    assert (desk.engine.sent, desk.engine.skipped) == (3, 4)
    await desk.gateway.wait_delivered()
    assert kinds(await desk.published(desk.account, other)) == ["OrderAccepted"] * 3


async def test_a_submit_repeated_within_one_batch_is_sent_once(desk: Desk) -> None:
    submitted = desk.submitted("o1")
    await desk.engine.handle_batch([submitted, desk.cancel("o1"), submitted])
    assert desk.sent() == [("SubmitOrder", "o1"), ("CancelRequest", "o1")]
    assert (desk.engine.sent, desk.engine.skipped) == (1, 1)


async def test_commands_reach_the_broker_in_batch_order_before_any_answer(desk: Desk) -> None:
    desk.broker.answering = False
    batch: list[Event] = []
    for n in range(10):
        batch += [desk.submitted(f"o{n}"), desk.amend(f"o{n}"), desk.cancel(f"o{n}")]
    task = asyncio.ensure_future(desk.engine.handle_batch(batch))
    await eventually(lambda: len(desk.broker.requests) == 30, 5.0, message="all sent")
    assert not task.done(), "the answers are awaited after every command was sent"
    expected: list[tuple[str, str]] = []
    for n in range(10):
        expected += [
            ("SubmitOrder", f"o{n}"),
            ("AmendRequest", f"o{n}"),
            ("CancelRequest", f"o{n}"),
        ]
    assert desk.sent() == expected
    desk.broker.release()
    await task
    assert desk.engine.sent == 10


async def test_a_timeout_still_counts_as_sent_and_keeps_the_claim(
    database: Database, unique: str
) -> None:
    clock = ManualClock(NOW)
    broker = ScriptedBroker()
    broker.answering = False
    breaker = CircuitBreaker(failure_threshold=100, reset_timeout=30.0, clock=clock)
    recorder = ReportRecorder(database, Outbox(clock), clock)
    gateway = BrokerGateway(
        broker, recorder.record_many, breaker=breaker, clock=clock, timeout=0.05
    )
    await gateway.start()
    try:
        engine = ExecutionEngine(MemoryBus(), database, Outbox(clock), gateway, clock)
        desk = Desk(database, engine, gateway, broker, breaker, clock, f"acc-{unique}")
        await engine.handle_batch([desk.submitted("o1"), desk.submitted("o2")])
        assert (engine.sent, engine.skipped) == (2, 0)
        assert await desk.claimed() == {desk.order("o1"), desk.order("o2")}
        broker.release()  # the late answers are still recorded
        await eventually(lambda: recorder.recorded == 2, 5.0, message="late answers")
        assert kinds(await desk.published()) == ["OrderAccepted", "OrderAccepted"]
    finally:
        await gateway.stop(drain_within=2.0)


async def test_an_unreachable_broker_dead_letters_the_batch_in_one_go(desk: Desk) -> None:
    desk.broker.failing = True
    batch = [desk.submitted("o1"), desk.cancel("o1"), desk.submitted("o2"), desk.amend("o2")]
    await desk.engine.handle_batch(batch)
    events = await desk.published()
    assert [(topic, kind) for (topic, _), kind in zip(events, kinds(events), strict=True)] == [
        ("dead_letter", "DeadLettered"),
        ("order.events", "OrderRejected"),
        ("order.events", "OrderCancelRejected"),
        ("dead_letter", "DeadLettered"),
        ("order.events", "OrderRejected"),
        ("order.events", "OrderReplaceRejected"),
    ]
    parked = events[0][1]
    assert isinstance(parked, DeadLettered)
    assert (parked.reason, parked.original_event_id) == ("BROKER_UNAVAILABLE", batch[0].id)
    cancel_refused, amend_refused = events[2][1], events[5][1]
    assert isinstance(cancel_refused, OrderCancelRejected)
    assert isinstance(amend_refused, OrderReplaceRejected), "a refused amend is not a cancel's"
    assert amend_refused.order_id == desk.order("o2")
    assert amend_refused.reason.startswith("broker unavailable: "), amend_refused.reason
    assert await desk.claimed() == set(), "an order never sent keeps no claim"
    assert desk.engine.sent == 0


async def test_a_half_open_breaker_lets_its_trial_decide_for_the_rest(desk: Desk) -> None:
    desk.broker.failing = True
    await desk.engine.handle_batch([desk.submitted(f"down{n}") for n in range(3)])
    assert not desk.gateway.circuit_closed
    desk.broker.failing = False
    desk.clock.advance(timedelta(seconds=30))  # half-open: one trial may go
    await desk.engine.handle_batch([desk.submitted(f"o{n}") for n in range(3)])
    assert desk.sent() == [("SubmitOrder", f"o{n}") for n in range(3)]
    assert desk.gateway.circuit_closed
    assert desk.engine.sent == 3


async def test_the_engine_consumes_the_bus_in_batches(desk: Desk) -> None:
    await desk.bus.start()
    await desk.engine.start()
    commands = [desk.submitted("o1"), desk.cancel("o1"), desk.submitted("o2")]
    await desk.bus.publish_many(ORDER_COMMANDS.name, [(c, desk.account) for c in commands])
    await eventually(lambda: len(desk.broker.requests) == 3, 5.0, message="sent")
    assert desk.sent() == [("SubmitOrder", "o1"), ("CancelRequest", "o1"), ("SubmitOrder", "o2")]


class _FlakyGateway:
    """A gateway stand-in: the first order finds the broker unavailable, the second hits a
    bug, any other is sent."""

    circuit_closed = True

    def __init__(self, unavailable: str, broken: str) -> None:
        self.unavailable, self.broken = unavailable, broken
        self.sent: list[str] = []

    async def submit(self, request: SubmitOrder) -> None:
        if request.order_id == self.unavailable:
            raise BrokerUnavailable("down")
        if request.order_id == self.broken:
            raise RuntimeError("a bug in the adapter")
        self.sent.append(request.order_id)


async def test_an_unexpected_failure_does_not_resend_a_parked_order(database: Database) -> None:
    """One order parked (rejected) and another failing unexpectedly in one batch: the batch is
    not raised back to the bus, whose one-by-one redelivery would re-claim the parked order
    and send it after its rejection was published."""
    parked, broken = new_id(), new_id()
    gateway = _FlakyGateway(parked, broken)
    engine = ExecutionEngine(
        MemoryBus(),
        database,
        Outbox(),
        gateway,  # type: ignore[arg-type]
        ManualClock(NOW),
    )
    await engine.handle_batch([_submitted_event(parked), _submitted_event(broken)])
    assert engine.send_errors == 1
    async with database.connect() as conn:
        payloads = (await conn.execute(select(outbox.c.payload))).scalars().all()
    ours = [e for e in map(decode_event, payloads) if e.correlation_id == f"corr-{parked}"]
    async with database.transaction() as conn:  # leave no unpublished rows to other tests
        await conn.execute(delete(outbox).where(outbox.c.event_id.in_([e.id for e in ours])))
    assert sorted(e.type for e in ours) == ["dead_letter", "order.rejected"]
    assert gateway.sent == []


def _submitted_event(order_id: str) -> Event:
    return new_event(
        OrderSubmitted(
            order_id=order_id,
            client_order_id=f"c-{order_id}",
            symbol="AAPL",
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=Decimal(1),
            time_in_force=TimeInForce.GTC,
            limit_price=Decimal("10"),
        ),
        occurred_at=NOW,
        correlation_id=f"corr-{order_id}",
        account_id="acc-1",
    )

"""Exposure kept current from order events, in batches, idempotently."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.helpers import eventually_equals
from tests.unit.risk.world import START, CountingCache, RiskWorld
from tradeloom.domain.events import (
    AnyPayload,
    Event,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    new_event,
)
from tradeloom.domain.orders import Side
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.risk.consumer import ExposureUpdater
from tradeloom.risk.exposure import AccountExposure


def event(payload: AnyPayload, account_id: str | None = "A1") -> Event:
    return new_event(payload, occurred_at=START, correlation_id="c", account_id=account_id)


def fill(
    kind: type[OrderFilled | OrderPartiallyFilled],
    order_id: str,
    fill_id: str,
    qty: int,
    leaves: int,
    symbol: str = "AAPL",
    account_id: str | None = "A1",
) -> Event:
    return event(
        kind(
            order_id=order_id,
            fill_id=fill_id,
            symbol=symbol,
            side=Side.BUY,
            quantity=Decimal(qty),
            price=Decimal(100),
            fee=Decimal("1.5"),
            filled_at=START,
            cumulative_quantity=Decimal(10 - leaves),
            leaves_quantity=Decimal(leaves),
        ),
        account_id,
    )


def trips(world: RiskWorld) -> dict[str, int]:
    assert isinstance(world.cache, CountingCache)
    return dict(world.cache.taken())


async def settled(world: RiskWorld) -> AccountExposure:
    return await world.exposure.snapshot("A1")


async def test_fills_and_terminal_events_keep_exposure_current(world: RiskWorld) -> None:
    updater = ExposureUpdater(world.exposure)
    filled = await world.place("A1", "AAPL", Side.BUY, "10", "100", order_id="o1")
    canceled = await world.place("A1", "MSFT", Side.BUY, "10", "100", order_id="o2")
    events = [
        fill(OrderPartiallyFilled, "o1", "f1", 4, 6),
        fill(OrderFilled, "o1", "f2", 6, 0),
        event(OrderCanceled(order_id="o2", reason="user")),
    ]
    for delivered in [*events, *reversed(events)]:  # everything redelivered, in reverse
        await updater.handle([delivered])
    snapshot = await settled(world)
    assert snapshot.positions == {"AAPL": Decimal(10)}
    assert snapshot.cash_flow_units == -(1000 + 3) * 10**4  # two fees of 1.5
    assert (snapshot.open_orders, snapshot.reserved_units) == (0, 0)
    assert filled.reserved == canceled.reserved == Decimal(1000)


async def test_a_batch_of_fills_is_one_round_trip_and_equals_one_event_at_a_time(
    counted: RiskWorld, world: RiskWorld
) -> None:
    """The same events on two worlds: one batch (with a duplicate inside it) on one, one at a
    time on the other. Same exposure; the batch took one round trip."""
    events = [
        fill(OrderPartiallyFilled, "o1", "f1", 4, 6),
        fill(OrderPartiallyFilled, "o2", "f3", 5, 5, symbol="MSFT"),
        fill(OrderFilled, "o1", "f2", 6, 0),
        fill(OrderPartiallyFilled, "o1", "f1", 4, 6),  # redelivered within the batch
        event(OrderAccepted(order_id="o2", broker_order_id="b2")),  # nothing to do
        fill(OrderFilled, "o2", "f4", 5, 0, symbol="MSFT"),
    ]
    for each in (counted, world):
        await each.place("A1", "AAPL", Side.BUY, "10", "100", order_id="o1")
        await each.place("A1", "MSFT", Side.BUY, "10", "100", order_id="o2")
    trips(counted)
    await ExposureUpdater(counted.exposure).handle(events)
    assert trips(counted) == {"run_scripts": 1}
    one_by_one = ExposureUpdater(world.exposure)
    for delivered in events:
        await one_by_one.handle([delivered])
    batched = await settled(counted)
    assert batched == await settled(world)
    assert batched.positions == {"AAPL": Decimal(10), "MSFT": Decimal(10)}
    assert (batched.open_orders, batched.reserved_units) == (0, 0)


async def test_cancels_rejects_and_expiries_read_their_reservations_once_per_batch(
    counted: RiskWorld,
) -> None:
    for order_id in ("o1", "o2", "o3", "o4"):
        await counted.place("A1", "AAPL", Side.BUY, "10", "100", order_id=order_id)
    trips(counted)
    await ExposureUpdater(counted.exposure).handle(
        [
            fill(OrderPartiallyFilled, "o1", "f1", 4, 6),
            event(OrderCanceled(order_id="o1", reason="user")),
            event(OrderRejected(order_id="o2", code="venue", reason="closed")),
            event(OrderExpired(order_id="o3")),
            event(OrderCanceled(order_id="o3", reason="again")),  # already released
            event(OrderCanceled(order_id="never-reserved", reason="user")),
        ]
    )
    assert trips(counted) == {"get_many": 1, "run_scripts": 1}
    snapshot = await settled(counted)
    assert (snapshot.open_orders, snapshot.reserved_units) == (1, 1000 * 10**4)  # o4
    assert snapshot.positions == {"AAPL": Decimal(4)}


async def test_a_fill_without_an_account_raises_before_anything_is_applied(
    world: RiskWorld,
) -> None:
    await world.place("A1", "AAPL", Side.BUY, "10", "100", order_id="o1")
    batch = [
        fill(OrderPartiallyFilled, "o1", "f1", 4, 6),
        fill(OrderFilled, "o1", "f2", 6, 0, account_id=None),
    ]
    with pytest.raises(ValueError, match="no account id"):
        await ExposureUpdater(world.exposure).handle(batch)
    assert (await settled(world)).positions == {}, "the batch is retried whole: nothing applied"


async def test_the_updater_consumes_order_events_in_batches_from_the_bus(
    world: RiskWorld,
) -> None:
    await world.place("A1", "AAPL", Side.BUY, "10", "100", order_id="o1")
    await world.place("A1", "MSFT", Side.BUY, "10", "100", order_id="o2")
    bus = MemoryBus(MemoryBroker(partitions=2))
    await bus.start()
    updater = ExposureUpdater(world.exposure)
    await updater.start(bus)
    try:
        await bus.publish_many(
            ORDER_EVENTS.name,
            [
                (fill(OrderPartiallyFilled, "o1", "f1", 4, 6), "A1"),
                (fill(OrderFilled, "o1", "f2", 6, 0), "A1"),
                (event(OrderCanceled(order_id="o2", reason="user")), "A1"),
            ],
        )
        await eventually_settled(world)
    finally:
        await updater.stop()
        await bus.close()
    snapshot = await settled(world)
    assert snapshot.positions == {"AAPL": Decimal(10)}
    assert (snapshot.open_orders, snapshot.reserved_units) == (0, 0)


async def eventually_settled(world: RiskWorld) -> None:
    async def open_orders() -> int:
        return (await settled(world)).open_orders

    await eventually_equals(open_orders, 0, within=5.0, what="every reservation released")

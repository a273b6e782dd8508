"""Exposure kept current from order events, idempotently."""

from __future__ import annotations

from decimal import Decimal

from tests.unit.risk.world import START, RiskWorld
from tradeloom.domain.events import (
    AnyPayload,
    Event,
    OrderCanceled,
    OrderFilled,
    OrderPartiallyFilled,
    new_event,
)
from tradeloom.domain.orders import Side
from tradeloom.risk.consumer import ExposureUpdater


def event(payload: AnyPayload) -> Event:
    return new_event(payload, occurred_at=START, correlation_id="c", account_id="A1")


def fill(
    kind: type[OrderFilled | OrderPartiallyFilled],
    order_id: str,
    fill_id: str,
    qty: int,
    leaves: int,
) -> Event:
    return event(
        kind(
            order_id=order_id,
            fill_id=fill_id,
            symbol="AAPL",
            side=Side.BUY,
            quantity=Decimal(qty),
            price=Decimal(100),
            fee=Decimal("1.5"),
            filled_at=START,
            cumulative_quantity=Decimal(10 - leaves),
            leaves_quantity=Decimal(leaves),
        )
    )


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
        await updater.on_order_event(delivered)
    snapshot = await world.exposure.snapshot("A1")
    assert snapshot.positions == {"AAPL": Decimal(10)}
    assert snapshot.cash_flow_units == -(1000 + 3) * 10**4  # two fees of 1.5
    assert (snapshot.open_orders, snapshot.reserved_units) == (0, 0)
    assert filled.reserved == canceled.reserved == Decimal(1000)

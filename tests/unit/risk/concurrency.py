"""Fifty concurrent orders of one user that together exceed a limit: the accepted ones stay
within it. Shared by the memory-cache unit test and the Redis integration test."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from tests.unit.risk.world import RiskWorld
from tradeloom.domain.orders import Side
from tradeloom.risk import Reservation, RiskRejected

ORDERS = 50


async def fire(world: RiskWorld, symbol: str, quantity: str, price: str) -> list[Reservation]:
    """Place ``ORDERS`` identical buys at once; return the accepted ones."""
    results = await asyncio.gather(
        *(world.place("A1", symbol, Side.BUY, quantity, price) for _ in range(ORDERS)),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, Reservation)]
    world.accepted.extend(accepted)
    refused = [r for r in results if isinstance(r, RiskRejected)]
    unexpected = [r for r in results if not isinstance(r, Reservation | RiskRejected)]
    assert not unexpected, f"checks failed unexpectedly: {unexpected!r}"
    assert len(accepted) + len(refused) == ORDERS
    return accepted


async def buying_power_holds(world: RiskWorld) -> None:
    """100,000 of cash, 50 buys of 3,000: exactly 33 fit."""
    await world.limits.set_limits("u1", max_concentration=Decimal(1), order_rate=1000)
    accepted = await fire(world, "AAPL", "30", "100")
    snapshot = await world.exposure.snapshot("A1")
    assert sum(r.reserved for r in accepted) <= Decimal(100_000)
    assert len(accepted) == 33, f"{len(accepted)} accepted"
    assert snapshot.reserved_units == 33 * 3000 * 10**4
    assert snapshot.open_orders == 33


async def open_orders_hold(world: RiskWorld) -> None:
    await world.limits.set_limits("u1", max_open_orders=10, order_rate=1000)
    accepted = await fire(world, "MSFT", "1", "100")
    assert len(accepted) == 10, f"{len(accepted)} accepted"
    assert (await world.exposure.snapshot("A1")).open_orders == 10


async def concentration_holds(world: RiskWorld) -> None:
    """20% of 100,000 in AAPL at 100 is 200 shares: 20 of 50 buys of 10."""
    await world.limits.set_limits("u1", order_rate=1000)
    accepted = await fire(world, "AAPL", "10", "100")
    assert len(accepted) == 20, f"{len(accepted)} accepted"
    _, buying, _ = await world.exposure.symbol_counters("A1", "AAPL")
    assert buying == 200 * 10**8


async def then_everything_releases(world: RiskWorld) -> None:
    """Releasing every accepted order twice, all at once, leaves nothing reserved."""
    held = await world.exposure.snapshot("A1")
    assert held.open_orders > 0
    order_ids = [r.order_id for r in world.accepted]
    released = await asyncio.gather(*(world.engine.release(i) for i in order_ids + order_ids))
    assert sum(released) == len(order_ids), "each reservation is released exactly once"
    snapshot = await world.exposure.snapshot("A1")
    assert (snapshot.open_orders, snapshot.reserved_units) == (0, 0)

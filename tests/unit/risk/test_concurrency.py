"""Invariant 7 on the memory cache: concurrent orders of one user cannot jointly breach a
limit (the same scenarios run on Redis in tests/integration/test_risk_redis.py)."""

from __future__ import annotations

from tests.unit.risk import concurrency
from tests.unit.risk.world import RiskWorld


async def test_fifty_concurrent_buys_stay_within_buying_power(world: RiskWorld) -> None:
    await concurrency.buying_power_holds(world)
    await concurrency.then_everything_releases(world)


async def test_fifty_concurrent_orders_stay_within_max_open_orders(world: RiskWorld) -> None:
    await concurrency.open_orders_hold(world)


async def test_fifty_concurrent_buys_stay_within_concentration(world: RiskWorld) -> None:
    await concurrency.concentration_holds(world)

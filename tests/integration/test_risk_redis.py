"""The risk engine on real Redis: the Lua twins of the exposure scripts behave like the Python
twins, concurrent orders cannot jointly breach a limit, and a check is fast.

Each test uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from tests.unit.risk import concurrency
from tests.unit.risk.world import RiskWorld
from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import Cache
from tradeloom.cache.redis import RedisCache
from tradeloom.domain.orders import Side
from tradeloom.risk import RiskRejected
from tradeloom.risk.exposure import ApplyFill, Bound, Counter, Exposure, RateBound, ReleaseOrder

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_cache(redis_url: str, unique: str) -> AsyncIterator[RedisCache]:
    prefix = f"test:{unique}:"
    cache = RedisCache(redis_url, prefix=prefix, client_name=f"test-{unique}")
    await cache.start()
    try:
        yield cache
    finally:
        await cache.close()
        admin = Redis.from_url(redis_url)
        leftovers = [key async for key in admin.scan_iter(match=f"{prefix}*")]
        if leftovers:
            await admin.delete(*leftovers)
        await admin.aclose()


@pytest.fixture
async def world(redis_cache: RedisCache) -> RiskWorld:
    world = RiskWorld(redis_cache)
    world.accounts.add("A1", "u1", "100000")
    for symbol in ("AAPL", "MSFT", "TSLA"):
        await world.quote(symbol, last="100", bid="99.99", ask="100.01")
    return world


async def test_fifty_concurrent_buys_stay_within_buying_power(world: RiskWorld) -> None:
    await concurrency.buying_power_holds(world)
    await concurrency.then_everything_releases(world)


async def test_fifty_concurrent_orders_stay_within_max_open_orders(world: RiskWorld) -> None:
    await concurrency.open_orders_hold(world)


async def test_fifty_concurrent_buys_stay_within_concentration(world: RiskWorld) -> None:
    await concurrency.concentration_holds(world)


async def scripted_history(cache: Cache) -> list[object]:
    """One history through every script path; returns every answer and the final state."""
    exposure = Exposure(cache)
    bp = ((1, Counter.RESERVED), (-1, Counter.CASH_FLOW))
    big = 2**51  # the largest amount the scripts hold exactly
    rate = RateBound("risk:rate:u", 1, 60.0, "rate", "too fast")
    answers: list[object] = [
        await exposure.reserve("o1", "A", "AAPL", Side.BUY, 10 * 10**8, 1000 * 10**4, []),
        await exposure.reserve("o1", "A", "AAPL", Side.BUY, 10 * 10**8, 1000 * 10**4, []),
        await exposure.reserve(
            "o2", "A", "AAPL", Side.BUY, 1, big, [Bound(bp, big, big - 1, "bp", "too much")]
        ),
        await exposure.reserve("o3", "A", "MSFT", Side.SELL, 5 * 10**8, 0, [rate]),
        await exposure.apply_fill("A", "AAPL", Side.BUY, Decimal(4), Decimal("99.5"), "o1", "f1"),
        await exposure.apply_fill("A", "AAPL", Side.BUY, Decimal(4), Decimal("99.5"), "o1", "f1"),
        await exposure.apply_fill("A", "MSFT", Side.SELL, Decimal(5), Decimal("10.01"), "o3", "f2"),
        await exposure.apply_fill("A", "TSLA", Side.SELL, Decimal("0.5"), Decimal(3), "ox", "f3"),
        await exposure.release("o1"),
        await exposure.release("o1"),
        await exposure.release("o3"),
        await exposure.reserve("o4", "A", "TSLA", Side.BUY, 10**8, 10**4, []),
        await exposure.reserve("o5", "A", "TSLA", Side.BUY, 10**8, 10**4, []),
        await exposure.apply(
            [
                ApplyFill("A", "TSLA", Side.BUY, Decimal(1), Decimal(1), "o4", "f4"),
                ReleaseOrder("o4", "A", "TSLA"),
                ReleaseOrder("o5"),
                ApplyFill("A", "TSLA", Side.BUY, Decimal(1), Decimal(1), "o4", "f4"),
                ReleaseOrder("o5"),
            ]
        ),
        await exposure.snapshot("A"),
        *[await exposure.symbol_counters("A", s) for s in ("AAPL", "MSFT", "TSLA")],
        await exposure.reservation("o1"),
    ]
    # the window of one order per minute is full: refused (status 1), retry within the minute
    refused = await exposure.reserve("o6", "A", "MSFT", Side.SELL, 10**8, 0, [rate])
    answers.append((refused.status, 0 < refused.wait_us <= 60 * 10**6))
    return answers


async def test_the_lua_scripts_agree_with_their_python_twins(redis_cache: RedisCache) -> None:
    on_redis = await scripted_history(redis_cache)
    in_memory = await scripted_history(MemoryCache())
    assert on_redis == in_memory
    assert [outcome.status for outcome in on_redis[:4]] == [0, -1, 1, 0]  # type: ignore[attr-defined]
    assert on_redis[13] == [True, False, True, False, False]
    assert on_redis[-1] == (1, True)


async def test_check_latency(world: RiskWorld) -> None:
    """The issue's target is p99 <= 5 ms; this asserts a looser bound so a busy machine does
    not fail it, and prints the figures."""
    await world.limits.set_limits("u1", order_rate=10_000, max_open_orders=10_000)
    for _ in range(500):
        reservation = await world.place("A1", "AAPL", Side.BUY, "1", "100")
        await world.engine.release(reservation.order_id)
    with pytest.raises(RiskRejected):
        await world.place("A1", "AAPL", Side.BUY, "100000", "100")
    accepted = sorted(s for s, outcome in world.latencies if outcome == "accepted")
    p50 = statistics.median(accepted) * 1000
    p99 = accepted[int(len(accepted) * 0.99) - 1] * 1000
    print(f"risk check on Redis: p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(accepted)} checks")
    assert p99 < 25, f"risk check p99 {p99:.2f} ms"

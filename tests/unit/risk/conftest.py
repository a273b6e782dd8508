from __future__ import annotations

import pytest

from tests.unit.risk.world import CountingCache, ManualMonotonic, RiskWorld
from tradeloom.cache.memory import MemoryCache


@pytest.fixture
def monotonic() -> ManualMonotonic:
    return ManualMonotonic()


async def _world(cache: MemoryCache) -> RiskWorld:
    world = RiskWorld(cache)
    world.accounts.add("A1", "u1", "100000")
    for symbol in ("AAPL", "MSFT", "TSLA"):
        await world.quote(symbol, last="100", bid="99.99", ask="100.01")
    return world


@pytest.fixture
async def world(monotonic: ManualMonotonic) -> RiskWorld:
    """Account A1 of user u1 with 100,000 USD; AAPL, MSFT and TSLA quoted at 100."""
    return await _world(MemoryCache(clock=monotonic))


@pytest.fixture
async def counted(monotonic: ManualMonotonic) -> RiskWorld:
    """The same as ``world``, on a cache that counts its round trips (``CountingCache``)."""
    return await _world(CountingCache(monotonic))

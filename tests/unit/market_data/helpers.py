"""Shared pieces of the market-data tests: a fixed clock, a simulator, polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from tests.helpers import eventually
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.time import ManualClock
from tradeloom.market_data.simulator import SimulationSettings, Simulator, Tick
from tradeloom.market_data.universe import default_universe

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def simulator(seed: int = 7) -> Simulator:
    return Simulator(default_universe(), ManualClock(T0), SimulationSettings(seed=seed))


def ticks(count: int, seed: int = 7) -> list[Tick]:
    return list(itertools.islice(simulator(seed).ticks(), count))


async def wait_until(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``seconds``."""
    await eventually(condition, seconds, interval=0.002, message=what)


class Collector:
    """Consumes a feed's updates in a background task into ``updates``."""

    def __init__(self, source: AsyncIterator[PriceUpdate]) -> None:
        self.updates: list[PriceUpdate] = []
        self._source = source
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for update in self._source:
            self.updates.append(update)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

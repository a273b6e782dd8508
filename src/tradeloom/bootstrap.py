"""The composition root: the one place that chooses concrete adapters.

``build_platform`` reads the settings and wires the database, the event bus, the cache and
the outbox relay together. Services receive these through their constructors; nothing else in
the code base names an adapter class (import-linter enforces it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import Cache
from tradeloom.cache.redis import RedisCache
from tradeloom.config import Settings
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.market_data.observers import LatencyProbe
from tradeloom.market_data.service import MarketData
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.messaging.nats import NatsBus
from tradeloom.messaging.port import EventBus
from tradeloom.observability.metrics import Metrics
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import current_revision, head_revision, upgrade
from tradeloom.storage.outbox import Outbox, OutboxRelay

log = structlog.get_logger()


class StartupError(Exception):
    """The platform cannot start as configured; the message says what to do."""


async def prepare_database(database: Database, settings: Settings) -> None:
    """The embedded SQLite database is migrated on start (zero setup); PostgreSQL must
    already be at the latest revision (``tradeloom db upgrade``), so two processes never race
    a migration and a process never runs on a schema it does not know."""
    if database.dialect == "sqlite":
        await upgrade(database)
        return
    current, head = await current_revision(settings.database_url), head_revision()
    if current != head:
        raise StartupError(
            f"database schema is at {current or 'nothing'}, expected {head}: "
            "run `tradeloom db upgrade` first"
        )


async def open_database(settings: Settings) -> Database:
    """A database ready for queries, prepared as a starting platform would prepare it."""
    database = Database(settings.database_url)
    try:
        await prepare_database(database, settings)
    except BaseException:
        await database.dispose()
        raise
    return database


def build_bus(settings: Settings) -> EventBus:
    if settings.bus_url == "memory://":
        return MemoryBus(MemoryBroker(partitions=settings.bus_partitions))
    return NatsBus(
        settings.bus_url,
        partitions=settings.bus_partitions,
        max_replicas=settings.bus_max_replicas,
        stream_prefix=settings.namespace.upper(),
    )


def build_cache(settings: Settings) -> Cache:
    if settings.cache_url == "memory://":
        return MemoryCache()
    return RedisCache(settings.cache_url, prefix=f"{settings.namespace}:")


@dataclass
class Platform:
    """Every backend of one process, started and closed together."""

    settings: Settings
    database: Database
    bus: EventBus
    cache: Cache
    outbox: Outbox
    relay: OutboxRelay
    clock: Clock
    metrics: Metrics
    market_data: MarketData
    _started: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        """Connect every backend; on failure close what was opened and raise."""
        try:
            await prepare_database(self.database, self.settings)
            await self.cache.start()
            self._started.append(self.cache.close)
            await self.bus.start()
            self._started.append(self.bus.close)
            await self.relay.start()
            self._started.append(self.relay.close)
            await self.market_data.start()
            self._started.append(self.market_data.stop)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close in reverse order of start; a failure to close one does not skip the others."""
        while self._started:
            closer = self._started.pop()
            try:
                await closer()
            except Exception:
                log.exception("platform.close_failed", closer=getattr(closer, "__qualname__", ""))
        await self.database.dispose()

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {"database": self.database.ping, "bus": self.bus.ping, "cache": self.cache.ping}


def build_platform(
    settings: Settings,
    clock: Clock | None = None,
    *,
    close_idle_bars: bool = True,
    latency_probe: LatencyProbe | None = None,
) -> Platform:
    """Wire one process's platform. ``close_idle_bars=False`` is for replays of recorded
    data, whose bars must close by their own trades rather than by the wall clock;
    ``latency_probe`` receives every price's feed-to-cache latency (benchmarks)."""
    clock = clock or SystemClock()
    database = Database(settings.database_url)
    bus = build_bus(settings)
    cache = build_cache(settings)
    outbox = Outbox(clock)
    relay = OutboxRelay(database, bus, clock=clock)
    metrics = Metrics()
    market_data = MarketData(
        bus=bus,
        cache=cache,
        database=database,
        outbox=outbox,
        metrics=metrics,
        clock=clock,
        notify_outbox=relay.notify,
        close_idle_bars=close_idle_bars,
        latency_probe=latency_probe,
    )
    return Platform(
        settings=settings,
        database=database,
        bus=bus,
        cache=cache,
        outbox=outbox,
        relay=relay,
        clock=clock,
        metrics=metrics,
        market_data=market_data,
    )

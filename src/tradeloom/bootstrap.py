"""The composition root: the one place that chooses concrete adapters.

``build_platform`` reads the settings and wires the database, the event bus, the cache, the
outbox relay, market data, risk, the OMS, the broker gateway and execution together. Services
receive these through their constructors; nothing else in the code base names an adapter
class (import-linter enforces it).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from tradeloom.accounts.repository import AccountRepository
from tradeloom.broker.gateway import BrokerGateway
from tradeloom.broker.market_feed import BrokerPriceFeed
from tradeloom.broker.paper import PaperBroker
from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import Cache
from tradeloom.cache.redis import RedisCache
from tradeloom.config import Service, Settings, nearest_existing
from tradeloom.domain.market import Instrument
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.execution.engine import ExecutionEngine
from tradeloom.execution.reports import ReportRecorder
from tradeloom.market_data.consumer import PriceConsumer
from tradeloom.market_data.observers import LatencyProbe
from tradeloom.market_data.service import MarketData
from tradeloom.market_data.universe import default_universe, load_universe
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.messaging.nats import NatsBus
from tradeloom.messaging.port import EventBus
from tradeloom.notifications import MemoizedOwners, Notifier, UserStreams
from tradeloom.observability.metrics import Metrics
from tradeloom.oms.commands import OrderCommands
from tradeloom.oms.projection import OrderProjection
from tradeloom.oms.queries import OrderQueries
from tradeloom.oms.state import OrderStateUpdater
from tradeloom.positions import PositionProjection, PositionQueries
from tradeloom.resilience.circuit_breaker import CircuitBreaker
from tradeloom.risk.consumer import ExposureUpdater
from tradeloom.risk.engine import CheckObserver, RiskEngine
from tradeloom.risk.exposure import Exposure
from tradeloom.risk.limits import LimitsStore, RiskLimits
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import current_revision, head_revision, upgrade
from tradeloom.storage.outbox import Outbox, OutboxRelay
from tradeloom.users.passwords import HashParameters, Passwords

log = structlog.get_logger()


GC_THRESHOLDS = (50_000, 50, 100)
"""The collector's thresholds in a long-running process (CPython's default: 700, 10, 10): a
young collection every 50,000 net allocations, a middle one every 50 of those, and a full one
at most every 100 middle ones (about every 10 minutes at 8,000 streams), so cycles of objects
that lived long (a closed stream's, a traceback's) are still freed, only rarely."""


def settle_heap() -> None:
    """Collect, move every object alive now into the collector's permanent generation, and
    make collections rarer (:data:`GC_THRESHOLDS`; for CPython up to 3.13, whose collector is
    generational).

    Call it once a long-running process has started. What start-up builds (modules, the
    platform, connection pools) lives as long as the process, yet a full (generation 2)
    collection scans all of it: measured on the market-data path at 20,000 updates/s, those
    scans paused the event loop for up to 70 ms and made the p99 latency. Frozen, they are
    never scanned again.

    The thresholds answer what a process holding thousands of SSE streams does: each stream
    waits between ticks on a fresh future, which outlives the default young generation (700
    allocations) and is promoted; promotions trigger full collections that scan every
    stream's objects. Measured at 8,000 streams: 55 full collections in a minute, up to
    1.19 s each, quote latency p99 1.4 s, /healthz p99 1.2 s; with a young generation of
    50,000 most of those futures are gone before it is examined, and the figures were 391 ms,
    83 ms and pauses under 100 ms. Not for test processes that build many platforms: anything
    frozen is never freed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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


def build_limits_store(settings: Settings, cache: Cache) -> LimitsStore:
    """Per-user limits in ``cache``, defaulting to the settings' ``risk_*`` values."""
    return LimitsStore(
        cache,
        RiskLimits(
            max_order_notional=settings.risk_max_order_notional,
            max_open_orders=settings.risk_max_open_orders,
            max_concentration=settings.risk_max_concentration,
            order_rate=settings.risk_order_rate,
            order_rate_window=settings.risk_order_rate_window,
        ),
    )


def build_passwords(settings: Settings) -> Passwords:
    """Password hashing at the configured argon2 costs (the web tier and ``users create``)."""
    return Passwords(
        HashParameters(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_cost,
            parallelism=settings.password_parallelism,
        )
    )


@dataclass
class Component:
    """Something the platform starts and stops, in order."""

    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]


@dataclass
class Platform:
    """Every backend and service of one process, started in order and closed in reverse."""

    settings: Settings
    database: Database
    bus: EventBus
    cache: Cache
    outbox: Outbox
    relay: OutboxRelay
    clock: Clock
    metrics: Metrics
    market_data: MarketData
    instruments: dict[str, Instrument]
    accounts: AccountRepository
    risk: RiskEngine
    limits: LimitsStore
    orders: OrderCommands
    broker: PaperBroker
    gateway: BrokerGateway
    execution: ExecutionEngine
    order_state: OrderStateUpdater
    order_projection: OrderProjection
    order_queries: OrderQueries
    positions: PositionProjection
    position_queries: PositionQueries
    notifier: Notifier
    user_streams: UserStreams
    components: list[Component] = field(default_factory=list)
    _started: list[Component] = field(default_factory=list)

    async def start(self) -> None:
        """Prepare the database, then start every component; on failure close what started."""
        try:
            await prepare_database(self.database, self.settings)
            for component in self.components:
                await component.start()
                self._started.append(component)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop in reverse order; a failure to stop one does not skip the others, and the
        database is released whatever happens."""
        try:
            while self._started:
                component = self._started.pop()
                try:
                    await component.stop()
                except Exception:
                    log.exception("platform.stop_failed", component=component.name)
        finally:
            await self.database.dispose()

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """One check per configured backend, the archive folder included (``/readyz``)."""
        archive = self.settings.archive_path
        return {
            "database": self.database.ping,
            "bus": self.bus.ping,
            "cache": self.cache.ping,
            "archive": lambda: check_archive_folder(archive),
        }


async def check_archive_folder(path: Path) -> None:
    """Raise unless ``path`` is a writable folder, or is missing under a writable folder (it
    is created when first written; nothing creates it at start). Settings refuse a path that
    is not a folder, so this catches what changed since: a file put in its place, lost write
    permission, a file system remounted read-only."""
    # sync -> async seam: file system calls in a worker thread, off the event loop
    await asyncio.to_thread(_require_writable_folder, path)


def _require_writable_folder(path: Path) -> None:
    existing = nearest_existing(path)
    if existing is None:
        return
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{str(existing)!r} is not writable")


def build_instruments(settings: Settings) -> dict[str, Instrument]:
    universe = load_universe(settings.universe_file) if settings.universe_file else None
    return {i.symbol: i for i in (universe or default_universe())}


def _risk_check_observer(metrics: Metrics, extra: CheckObserver | None) -> CheckObserver:
    def observe(seconds: float, outcome: str) -> None:
        metrics.risk_check_seconds.observe(seconds)
        if extra is not None:
            extra(seconds, outcome)

    return observe


def build_platform(
    settings: Settings,
    clock: Clock | None = None,
    *,
    close_idle_bars: bool = True,
    latency_probe: LatencyProbe | None = None,
    risk_check_observer: CheckObserver | None = None,
) -> Platform:
    """Wire one process's platform: the API's commands and queries always, and the consuming
    services ``settings.services`` names (every one by default; see :class:`Service`).

    ``close_idle_bars=False`` is for replays of recorded data, whose bars must close by their
    own trades rather than by the wall clock; ``latency_probe`` receives every price's
    feed-to-cache latency and ``risk_check_observer`` every risk check's
    ``(seconds, outcome)``, after the metrics histogram has (benchmarks)."""
    clock = clock or SystemClock()
    database = Database(settings.database_url)
    bus = build_bus(settings)
    cache = build_cache(settings)
    outbox = Outbox(clock)
    relay = OutboxRelay(database, bus, clock=clock)
    metrics = Metrics()
    instruments = build_instruments(settings)
    broker = PaperBroker(
        instruments.values(),
        clock,
        latency=settings.paper_latency,
        slippage_ticks=settings.paper_slippage_ticks,
    )
    services = settings.service_set
    broker_feed = BrokerPriceFeed(broker)
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
        extra_observers=[broker_feed]
        if {Service.MARKET_DATA, Service.EXECUTION} <= services
        else [],
        consume=Service.MARKET_DATA in services,
    )
    accounts = AccountRepository(database, clock)
    exposure = Exposure(cache)
    limits = build_limits_store(settings, cache)
    risk = RiskEngine(
        cache,
        market_data.last_prices,
        limits,
        exposure,
        accounts,
        instruments,
        clock,
        on_check=_risk_check_observer(metrics, risk_check_observer),
    )
    orders = OrderCommands(
        database, outbox, risk, accounts, instruments, clock, notify=relay.notify
    )
    recorder = ReportRecorder(database, outbox, clock, notify=relay.notify)
    gateway = BrokerGateway(
        broker,
        recorder.record_many,
        breaker=CircuitBreaker(clock=clock, name="broker"),
        clock=clock,
        timeout=settings.broker_timeout,
    )
    execution = ExecutionEngine(
        bus, database, outbox, gateway, clock, notify=relay.notify, metrics=metrics
    )
    order_state = OrderStateUpdater(bus, database, clock)
    order_projection = OrderProjection(bus, database, clock, metrics=metrics)
    positions = PositionProjection(
        bus, database, outbox, clock, metrics=metrics, notify=relay.notify
    )
    notifier = Notifier(bus, cache, MemoizedOwners(accounts), clock, metrics=metrics)
    exposure_updates = ExposureUpdater(exposure)

    platform = Platform(
        settings=settings,
        database=database,
        bus=bus,
        cache=cache,
        outbox=outbox,
        relay=relay,
        clock=clock,
        metrics=metrics,
        market_data=market_data,
        instruments=instruments,
        accounts=accounts,
        risk=risk,
        limits=limits,
        orders=orders,
        broker=broker,
        gateway=gateway,
        execution=execution,
        order_state=order_state,
        order_projection=order_projection,
        order_queries=OrderQueries(database),
        positions=positions,
        position_queries=PositionQueries(database, market_data.last_prices),
        notifier=notifier,
        user_streams=UserStreams(cache),
    )
    # Every consumer joins before the relay starts publishing what a previous run left in
    # the outbox, so no group misses the backlog.
    components = [
        Component("cache", cache.start, cache.close),
        Component("bus", bus.start, bus.close),
    ]
    if Service.EXECUTION in services:
        components.append(Component("broker gateway", gateway.start, gateway.stop))
        if Service.MARKET_DATA not in services:
            # The paper broker still needs prices: its own group on the price topic (one
            # group, so ONE execution process per paper venue: see config.Service).
            feed = PriceConsumer(bus, [broker_feed], metrics, group="broker-prices")
            components.append(Component("broker prices", feed.start, feed.stop))
    components.append(Component("market data", market_data.start, market_data.stop))
    if Service.EXECUTION in services:
        components += [
            Component("order state", order_state.start, order_state.stop),
            Component("risk exposure", lambda: exposure_updates.start(bus), exposure_updates.stop),
            Component("execution", execution.start, execution.stop),
        ]
    if Service.READ_SIDE in services:
        components += [
            Component("order projection", order_projection.start, order_projection.stop),
            Component("positions", positions.start, positions.stop),
            Component("notifications", notifier.start, notifier.stop),
        ]
    components.append(Component("outbox relay", relay.start, relay.close))
    platform.components = components
    return platform

"""The positions read side with its real neighbours: fill events arrive over the bus (the
in-process bus, or NATS JetStream), the projection writes PostgreSQL (or SQLite), the outbox
relay publishes ``position.updated`` back onto the bus, and the queries value positions at
last prices from the cache (Redis in production). Redelivered and late fills included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers import eventually_equals
from tests.unit.positions.world import fill_event, open_account, record_history
from tradeloom.bootstrap import build_bus, build_cache
from tradeloom.cache.port import Cache
from tradeloom.config import Settings
from tradeloom.domain.events import Event, PositionUpdated, PriceUpdate, new_event
from tradeloom.domain.time import SystemClock
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.messaging.port import EventBus
from tradeloom.messaging.topics import ORDER_EVENTS, POSITION_UPDATED
from tradeloom.observability.metrics import Metrics
from tradeloom.positions import PositionProjection, PositionQueries
from tradeloom.positions.verify import verify_positions
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.outbox import Outbox, OutboxRelay

D = Decimal


@dataclass
class ReadSide:
    database: Database
    bus: EventBus
    cache: Cache
    projection: PositionProjection
    metrics: Metrics
    updates: list[Event] = field(default_factory=list)

    async def last_update(self, account: str) -> tuple[D, D] | None:
        """(quantity, realized P&L) of the last position.updated received for ``account``."""
        mine = [e.payload for e in self.updates if e.account_id == account]
        last = mine[-1] if mine else None
        return (last.quantity, last.realized_pnl) if isinstance(last, PositionUpdated) else None


def settings_for(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique: str
) -> Settings:
    if kind == "embedded":
        return Settings(database_url=f"sqlite:///{tmp_path}/read.db")
    return Settings(
        database_url=request.getfixturevalue("postgres_url"),
        bus_url=request.getfixturevalue("nats_url"),
        cache_url=request.getfixturevalue("redis_url"),
        namespace=f"ps{unique}",
    )


@pytest.fixture(params=["embedded", "production"])
async def read_side(
    request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> AsyncIterator[ReadSide]:
    settings = settings_for(request.param, tmp_path, request, unique)
    await upgrade_database(settings.database_url)
    database, bus, cache = (
        Database(settings.database_url),
        build_bus(settings),
        build_cache(settings),
    )
    clock, metrics = SystemClock(), Metrics()
    relay = OutboxRelay(database, bus, clock=clock, poll_interval=0.2)
    projection = PositionProjection(
        bus, database, Outbox(clock), clock, metrics=metrics, notify=relay.notify
    )
    made = ReadSide(database, bus, cache, projection, metrics)

    async def collect(events: Sequence[Event]) -> None:
        made.updates.extend(events)

    await cache.start()
    await bus.start()
    await bus.subscribe_batch(POSITION_UPDATED.name, f"test-{unique}", collect)
    await projection.start()
    await relay.start()
    yield made
    await projection.stop()
    await relay.close()
    await bus.close()
    await cache.close()
    await database.dispose()
    if request.param == "production":
        await delete_bus_streams(settings.bus_url, settings.namespace.upper())


async def test_fills_over_the_bus_become_positions_cash_and_announcements(
    read_side: ReadSide, unique: str
) -> None:
    owner = f"trader-{unique}"
    account = await open_account(read_side.database, owner, cash="10000")
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    buy = fill_event(account, "AAPL", "buy", "100", "10", filled_at=t0)
    sell = fill_event(account, "AAPL", "sell", "100", "12", filled_at=t0 + timedelta(minutes=2))
    late = fill_event(account, "AAPL", "buy", "100", "14", filled_at=t0 + timedelta(minutes=1))
    # The bus drops a republished event id, so the fill comes again in an event of its own.
    again = new_event(buy.payload, occurred_at=t0, correlation_id="again", account_id=account)
    for event in (buy, sell, again, late):  # a redelivery, and an older fill arriving last
        await read_side.bus.publish(ORDER_EVENTS.name, event, account)

    queries = PositionQueries(read_side.database, LastPrices(read_side.cache, SystemClock()))

    async def position() -> tuple[D, D | None, D] | None:
        views = await queries.positions(owner)
        return (views[0].quantity, views[0].average_cost, views[0].realized_pnl) if views else None

    # canonical: buy 100 @ 10, buy 100 @ 14, sell 100 @ 12 -> long 100 @ 12, nothing realized
    refolded: tuple[D, D | None, D] | None = (D(100), D(12), D(0))
    await eventually_equals(position, refolded, what="the late fill was refolded")
    final: tuple[D, D] | None = (D(100), D(0))
    await eventually_equals(
        lambda: read_side.last_update(account),
        final,
        what="position.updated of the final position arrived over the bus",
    )
    summary = await queries.account_summary(owner, account)
    assert summary.cash == D(10000) - 1000 + 1200 - 1400
    assert summary.equity is None  # no price yet: unknown, not zero

    now = datetime.now(UTC)
    price = PriceUpdate(
        symbol="AAPL",
        bid=D("12.9"),
        ask=D("13.1"),
        last=None,
        volume=D(0),
        exchange_time=now,
        venue="T",
    )
    await LastPrices(read_side.cache, SystemClock()).record([price])
    summary = await queries.account_summary(owner, account)
    assert (summary.market_value, summary.unrealized_pnl) == (D(1300), D(100))
    assert summary.equity == summary.cash + 1300

    await record_history(read_side.database, [buy, sell, late])
    report = await verify_positions(read_side.database, accounts=[account])
    assert report.differences == []
    duplicates = read_side.metrics.registry.get_sample_value(
        "tradeloom_events_projected_total", {"group": "positions", "outcome": "duplicate"}
    )
    assert duplicates == 1

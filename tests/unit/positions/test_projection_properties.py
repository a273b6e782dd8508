"""Property: whatever the delivery (any order, redeliveries anywhere, any batch sizes), the
positions and cash the projection stores are the reference fold of the distinct fills in
canonical order. On SQLite and PostgreSQL; each example uses accounts of its own."""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.positions.reference import batches, deliveries, distinct_fills, reference
from tests.unit.positions.world import START, stored_cash, stored_positions
from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.events import Event, OrderFilled, new_event
from tradeloom.domain.positions import Fill
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.positions import PositionProjection
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.outbox import Outbox

OPENING = "100000"
SYMBOLS = ("AAPL", "MSFT")


def as_event(fill: Fill) -> Event:
    payload = OrderFilled(
        order_id=f"o-{fill.fill_id}",
        fill_id=fill.fill_id,
        symbol=fill.symbol,
        side=fill.side,
        quantity=fill.quantity,
        price=fill.price,
        fee=fill.fee,
        filled_at=fill.filled_at,
        cumulative_quantity=fill.quantity,
        leaves_quantity=fill.quantity - fill.quantity,
    )
    return new_event(
        payload, occurred_at=fill.filled_at, correlation_id="c", account_id=fill.account_id
    )


async def project(url: str, accounts: tuple[str, ...], parts: list[list[Fill]]) -> Database:
    database = Database(url, pool_size=2)
    for account in accounts:
        await AccountRepository(database).create(account, "prop", OPENING)
    clock = ManualClock(START)
    projection = PositionProjection(
        MemoryBus(MemoryBroker(partitions=1)), database, Outbox(clock), clock
    )
    events: dict[str, Event] = {}  # a redelivery is the same event again
    for part in parts:
        await projection.handle([events.setdefault(f.fill_id, as_event(f)) for f in part])
    return database


async def check(database: Database, accounts: tuple[str, ...], fills: list[Fill]) -> None:
    expected, cash = reference(fills)
    stored = await stored_positions(database, *accounts)
    assert set(stored) == set(expected)
    for key, ref in expected.items():
        row = stored[key]
        p = row.position
        assert (p.quantity, p.cost_basis, p.realized_pnl, p.fees) == (
            ref.quantity,
            ref.basis,
            ref.realized,
            ref.fees,
        ), f"position {key}"
        assert (row.fill_count, row.last_fill_id) == (ref.fill_count, ref.last_fill_id)
    for account in accounts:
        assert await stored_cash(database, account) == int(OPENING) + cash.get(account, 0)


def test_any_delivery_gives_the_reference_positions_and_cash(database_url: str) -> None:
    asyncio.run(upgrade_database(database_url))

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        prefix = uuid.uuid4().hex[:10]
        accounts = (f"p{prefix}-1", f"p{prefix}-2")
        fills = data.draw(distinct_fills(accounts, SYMBOLS, max_size=20))
        parts = data.draw(batches(data.draw(deliveries(fills))))

        async def scenario() -> None:
            database = await project(database_url, accounts, parts)
            try:
                await check(database, accounts, fills)
            finally:
                await database.dispose()

        asyncio.run(scenario())

    run()

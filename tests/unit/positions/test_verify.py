"""`verify` recomputes positions and cash from the order events in ``order_history`` and names
every stored value that differs. Scoped to the test's own accounts (the PostgreSQL database
is shared with other tests)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import delete, update

from tests.unit.positions.world import (
    START,
    fill_event,
    open_account,
    record_history,
)
from tradeloom.domain.events import Event, OrderAccepted, new_event
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.positions import PositionProjection
from tradeloom.positions.verify import Difference, verify_positions
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import accounts, positions

MINUTE = timedelta(minutes=1)


async def trade(database: Database, clock: ManualClock) -> tuple[str, str, list[Event]]:
    """Two accounts' fills, in the order history and projected (late and redelivered too)."""
    a = await open_account(database, "verify", cash="1000")
    b = await open_account(database, "verify", cash="50")
    events = [
        fill_event(a, "AAPL", "buy", "10", "10", fee="0.5", filled_at=START),
        fill_event(a, "AAPL", "sell", "4", "12", filled_at=START + 2 * MINUTE, partial=True),
        fill_event(a, "AAPL", "buy", "3", "11", filled_at=START + MINUTE),
        fill_event(a, "MSFT", "sell", "1", "30", filled_at=START),
        fill_event(b, "AAPL", "buy", "1", "7", filled_at=START),
    ]
    accepted = OrderAccepted(order_id="o-1", broker_order_id="b-1")
    other = new_event(accepted, occurred_at=START, correlation_id="c", account_id=a)
    await record_history(database, [*events, other])
    projection = PositionProjection(MemoryBus(MemoryBroker()), database, Outbox(), clock)
    await projection.handle(events[:2])
    await projection.handle([events[2], events[0], *events[3:]])
    return a, b, events


async def test_a_consistent_projection_has_no_differences(
    database: Database, clock: ManualClock
) -> None:
    a, b, _ = await trade(database, clock)
    progress: list[tuple[int, int]] = []
    report = await verify_positions(
        database, accounts=[a, b], page_size=2, progress=lambda *p: progress.append(p)
    )
    assert report.differences == []
    assert report.consistent
    assert (report.fill_events, report.accounts, report.positions) == (5, 2, 3)
    assert progress[-1] == (5, 5)


async def test_a_tampered_position_or_cash_is_named_with_both_values(
    database: Database, clock: ManualClock
) -> None:
    a, b, _ = await trade(database, clock)
    async with database.transaction() as conn:
        await conn.execute(
            update(positions)
            .where(positions.c.account_id == a, positions.c.symbol == "AAPL")
            .values(realized_pnl=Decimal(99), fill_count=7)
        )
        await conn.execute(
            update(accounts).where(accounts.c.account_id == b).values(cash=Decimal(49))
        )
    report = await verify_positions(database, accounts=[a, b])
    # AAPL of a: buy 10 @ 10 (fee 0.5), buy 3 @ 11, sell 4 @ 12 from an average of 133/13:
    # 48 - 133 * 4 / 13 (rounded to 1e-12) - 0.5
    mine = [d for d in report.differences if d.account_id == a]
    assert mine == [
        Difference(a, "AAPL", "realized_pnl", "99", "6.576923076923"),
        Difference(a, "AAPL", "fill_count", "7", "3"),
    ]
    assert set(report.differences) - set(mine) == {Difference(b, None, "cash", "49", "43")}


async def test_a_missing_row_and_a_fill_the_projection_never_saw_are_reported(
    database: Database, clock: ManualClock
) -> None:
    a, b, _ = await trade(database, clock)
    async with database.transaction() as conn:
        await conn.execute(delete(positions).where(positions.c.account_id == b))
    unseen = fill_event(a, "MSFT", "buy", "1", "29", filled_at=START + MINUTE)
    await record_history(database, [unseen])
    report = await verify_positions(database, accounts=[a, b])
    fields = {(d.account_id, d.symbol, d.field) for d in report.differences}
    assert fields == {
        (a, "MSFT", "quantity"),
        (a, "MSFT", "cost_basis"),
        (a, "MSFT", "realized_pnl"),
        (a, "MSFT", "fill_count"),
        (a, "MSFT", "last_filled_at"),
        (a, "MSFT", "last_fill_id"),
        (a, None, "cash"),
        (b, "AAPL", "position"),
    }


async def test_conflicting_terms_in_the_history_are_reported(
    database: Database, clock: ManualClock
) -> None:
    a, _, events = await trade(database, clock)
    first = events[0].payload
    twin = fill_event(a, "AAPL", "buy", "10", "10.5", fee="0.5", fill_id=first.fill_id)  # type: ignore[union-attr]
    await record_history(database, [twin])
    report = await verify_positions(database, accounts=[a])
    assert [(d.field, d.stored) for d in report.differences] == [("fill", twin.id)]

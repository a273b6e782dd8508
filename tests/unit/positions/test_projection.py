"""The positions projection on SQLite and PostgreSQL: average cost through the database,
idempotency by fill id, the canonical order for late fills, cash, and what it announces."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from tests.helpers import eventually_equals
from tests.unit.positions.world import (
    START,
    D,
    announced,
    fill_event,
    new_account_id,
    open_account,
    stored_cash,
    stored_position,
    stored_positions,
)
from tests.unit.recorded_sql import recorded_statements
from tradeloom.domain.events import Event, OrderAccepted, PositionUpdated, new_event
from tradeloom.domain.numbers import ZERO
from tradeloom.domain.positions import cash_after, fill_from_event, fold_position
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.observability.metrics import Metrics
from tradeloom.positions import PositionProjection
from tradeloom.positions.repository import PositionRow
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox

MINUTE = timedelta(minutes=1)


class Notices:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def projection(database: Database, clock: ManualClock, **options: object) -> PositionProjection:
    bus = MemoryBus(MemoryBroker(partitions=2))
    return PositionProjection(bus, database, Outbox(clock), clock, **options)  # type: ignore[arg-type]


def at(minutes: int) -> datetime:
    return START + minutes * MINUTE


async def deliver(p: PositionProjection, *batches: Sequence[Event]) -> None:
    for batch in batches:
        await p.handle(batch)


def numbers(row: PositionRow) -> tuple[D | None, ...]:
    position = row.position
    return (position.quantity, position.average_cost, position.realized_pnl)


# -- hand-worked P&L ---------------------------------------------------------------------------


async def test_the_worked_example_of_the_domain_docstring(
    database: Database, clock: ManualClock
) -> None:
    account = await open_account(database, "alice")
    p = projection(database, clock)
    steps = [
        (("buy", "100", "10"), (100, 10, 0)),
        (("buy", "100", "12"), (200, 11, 0)),
        (("sell", "150", "13"), (50, 11, 300)),
        (("sell", "100", "9"), (-50, 9, 200)),
        (("buy", "50", "8"), (0, None, 250)),
    ]
    for minute, ((side, quantity, price), expected) in enumerate(steps):
        await p.handle([fill_event(account, "AAPL", side, quantity, price, filled_at=at(minute))])
        row = await stored_position(database, account, "AAPL")
        assert numbers(row) == tuple(None if v is None else D(v) for v in expected)
    assert row.fill_count == 5
    assert row.position.cost_basis == 0
    assert await stored_cash(database, account) == D(100000) + 250


async def test_a_flip_from_long_to_short_realizes_the_long_and_opens_the_rest(
    database: Database, clock: ManualClock
) -> None:
    account = await open_account(database, "alice")
    p = projection(database, clock)
    await p.handle(
        [
            fill_event(account, "MSFT", "buy", "100", "10", filled_at=at(0)),
            fill_event(account, "MSFT", "sell", "150", "12", filled_at=at(1)),
        ]
    )
    row = await stored_position(database, account, "MSFT")
    # (12 - 10) * 100 realized on the long; 50 short opened at 12
    assert numbers(row) == (D(-50), D(12), D(200))
    assert row.position.cost_basis == -600
    assert await stored_cash(database, account) == D(100000) - 1000 + 1800


async def test_fees_reduce_realized_pnl_and_cash(database: Database, clock: ManualClock) -> None:
    account = await open_account(database, "alice", cash="5000")
    p = projection(database, clock)
    await p.handle(
        [
            fill_event(account, "AAPL", "buy", "100", "10", fee="1.50", filled_at=at(0)),
            fill_event(account, "AAPL", "sell", "40", "12", fee="0.75", filled_at=at(1)),
        ]
    )
    row = await stored_position(database, account, "AAPL")
    assert (row.position.fees, row.position.realized_pnl) == (D("2.25"), D("77.75"))
    assert await stored_cash(database, account) == D(5000) - D("1001.50") + D("479.25")


# -- idempotency and order ---------------------------------------------------------------------


async def test_a_redelivered_fill_changes_nothing_in_the_same_or_a_later_batch(
    database: Database, clock: ManualClock
) -> None:
    account = await open_account(database, "alice")
    f1 = fill_event(account, "AAPL", "buy", "100", "10", filled_at=at(0))
    f2 = fill_event(account, "AAPL", "buy", "100", "12", filled_at=at(1))
    f3 = fill_event(account, "AAPL", "sell", "50", "13", filled_at=at(2))
    p = projection(database, clock)
    await deliver(p, [f1, f2, f1], [f3], [f1, f3, f2])
    row = await stored_position(database, account, "AAPL")
    assert numbers(row) == (D(150), D(11), D(100))
    assert row.fill_count == 3
    assert await stored_cash(database, account) == D(100000) - 1000 - 1200 + 650
    assert (p.applied, p.duplicates, p.conflicts) == (3, 4, 0)
    assert len(await announced(database, account)) == 2  # nothing for the duplicates' batch


async def test_a_late_older_fill_refolds_the_position_in_canonical_order(
    database: Database, clock: ManualClock
) -> None:
    account = await open_account(database, "alice")
    buy_early = fill_event(account, "AAPL", "buy", "100", "10", filled_at=at(1))
    sell_late = fill_event(account, "AAPL", "sell", "100", "12", filled_at=at(3))
    buy_between = fill_event(account, "AAPL", "buy", "100", "14", filled_at=at(2))
    p = projection(database, clock)
    await deliver(p, [buy_early, sell_late])
    assert numbers(await stored_position(database, account, "AAPL")) == (D(0), None, D(200))

    await p.handle([buy_between])
    # canonical: buy 100 @ 10, buy 100 @ 14 (avg 12), sell 100 @ 12: nothing realized
    row = await stored_position(database, account, "AAPL")
    assert numbers(row) == (D(100), D(12), D(0))
    assert (row.fill_count, row.last_filled_at) == (3, START + 3 * MINUTE)
    assert row.last_fill_id == sell_late.payload.fill_id  # type: ignore[union-attr]
    assert await stored_cash(database, account) == D(100000) - 1000 + 1200 - 1400

    again = projection(database, clock)  # delivered in canonical order elsewhere: same row
    other = await open_account(database, "bob")
    await again.handle(
        [
            fill_event(other, "AAPL", "buy", "100", "10", filled_at=at(1)),
            fill_event(other, "AAPL", "buy", "100", "14", filled_at=at(2)),
            fill_event(other, "AAPL", "sell", "100", "12", filled_at=at(3)),
        ]
    )
    assert numbers(await stored_position(database, other, "AAPL")) == numbers(row)


async def test_a_fill_id_with_other_terms_is_refused_and_counted(
    database: Database, clock: ManualClock
) -> None:
    account = await open_account(database, "alice")
    metrics = Metrics()
    p = projection(database, clock, metrics=metrics, group="positions-conflict")
    first = fill_event(account, "AAPL", "buy", "100", "10", fill_id=f"x-{account}")
    in_batch = fill_event(account, "AAPL", "buy", "100", "10.01", fill_id=f"x-{account}")
    later = fill_event(account, "AAPL", "sell", "100", "10", fill_id=f"x-{account}")
    await deliver(p, [first, in_batch], [later])
    row = await stored_position(database, account, "AAPL")
    assert numbers(row) == (D(100), D(10), D(0))
    assert await stored_cash(database, account) == D(100000) - 1000
    assert (p.applied, p.conflicts) == (1, 2)
    sample = metrics.registry.get_sample_value(
        "tradeloom_events_projected_total", {"group": "positions-conflict", "outcome": "conflict"}
    )
    assert sample == 2


async def test_late_fills_of_several_positions_are_refolded_together(
    database: Database, clock: ManualClock
) -> None:
    account = await open_account(database, "alice")
    first = [fill_event(account, s, "buy", "10", "10", filled_at=at(2)) for s in ("A", "B")]
    late = [fill_event(account, s, "sell", "4", "12", filled_at=at(1)) for s in ("A", "B")]
    p = projection(database, clock)
    await p.handle(first)
    await p.handle(late)
    for symbol in ("A", "B"):  # canonical: sell 4 @ 12 (short), then buy 10 @ 10
        row = await stored_position(database, account, symbol)
        assert numbers(row) == (D(6), D(10), D(8)), symbol
        assert row.fill_count == 2


def expected_of(events: Sequence[Event]) -> tuple[dict[str, tuple[D, ...]], D]:
    """Each symbol's (quantity, cost basis, realized P&L) and the cash moved: the domain's
    fold of the distinct fills."""
    fills = list({f.fill_id: f for f in map(fill_from_event, events)}.values())
    by_symbol: dict[str, tuple[D, ...]] = {}
    for symbol in {f.symbol for f in fills}:
        mine = [f for f in fills if f.symbol == symbol]
        p = fold_position(mine[0].account_id, symbol, mine)
        by_symbol[symbol] = (p.quantity, p.cost_basis, p.realized_pnl)
    return by_symbol, cash_after(ZERO, fills)


async def test_overlapping_batches_committed_at_once_leave_the_fold_of_their_fills(
    database: Database, clock: ManualClock
) -> None:
    """A redelivered batch overlapping one in flight (a second consumer took it over): both
    commit at once, each position new to one of them. Whichever goes second must fold onto
    what the first created, not start from flat."""
    for _ in range(5):
        account = await open_account(database, "alice")
        early = [
            fill_event(account, s, "buy", "10", "10", filled_at=at(1)) for s in ("A", "B", "C")
        ]
        later = [
            fill_event(account, s, "sell", "4", "12", filled_at=at(2)) for s in ("A", "B", "C")
        ]
        first, second = early[:2], [early[1], early[2], *later]
        p = projection(database, clock)
        await asyncio.gather(p.handle(first), p.handle(second))
        by_symbol, moved = expected_of([*first, *second])
        stored = await stored_positions(database, account)
        assert {
            key[1]: (r.position.quantity, r.position.cost_basis, r.position.realized_pnl)
            for key, r in stored.items()
        } == by_symbol
        assert {key[1]: r.fill_count for key, r in stored.items()} == {"A": 2, "B": 2, "C": 2}
        assert await stored_cash(database, account) == D(100000) + moved


async def test_a_batch_writes_fills_positions_and_cash_in_two_statements(
    database: Database, clock: ManualClock
) -> None:
    """On PostgreSQL: one statement locks the positions and records the fills, one upserts
    the positions and moves the cash (the outbox's statements aside)."""
    account = await open_account(database, "alice")
    p = projection(database, clock)
    await p.handle([fill_event(account, "AAPL", "buy", "10", "10", filled_at=at(0))])
    with recorded_statements(database) as sent:
        await p.handle(
            [
                fill_event(account, "AAPL", "sell", "4", "12", filled_at=at(1)),
                fill_event(account, "MSFT", "buy", "1", "50", filled_at=at(1)),
            ]
        )
    ours = [s for s in sent if "position" in s or "accounts" in s]
    if database.dialect == "postgresql":
        assert len(ours) == 2, ours
    assert numbers(await stored_position(database, account, "AAPL")) == (D(6), D(10), D(8))
    assert await stored_cash(database, account) == D(100000) - 100 + 48 - 50


# -- cash, announcements, metrics --------------------------------------------------------------


async def test_each_changed_position_is_announced_once_per_batch_after_commit(
    database: Database, clock: ManualClock
) -> None:
    account = await open_account(database, "alice")
    notices = Notices()
    p = projection(database, clock, notify=notices)
    aapl_1 = fill_event(account, "AAPL", "buy", "10", "100", filled_at=at(0))
    msft = fill_event(account, "MSFT", "sell", "5", "50", fee="1", filled_at=at(1))
    aapl_2 = fill_event(account, "AAPL", "buy", "10", "110", order_id="o-2", filled_at=at(2))
    await p.handle([aapl_1, msft, aapl_2])
    assert notices.count == 1

    events = await announced(database, account)
    by_symbol = {e.payload.symbol: e for e in events}  # type: ignore[union-attr]
    assert sorted(by_symbol) == ["AAPL", "MSFT"]
    assert len(events) == 2
    aapl = by_symbol["AAPL"]
    assert (aapl.causation_id, aapl.correlation_id) == (aapl_2.id, aapl_2.correlation_id)
    assert (aapl.account_id, aapl.occurred_at) == (account, START)
    assert aapl.payload == PositionUpdated(
        symbol="AAPL",
        quantity=D(20),
        average_cost=D(105),
        cost_basis=D(2100),
        realized_pnl=D(0),
        fees=D(0),
        cash=D(100000) - 2100 + 249,
        fill_id=aapl_2.payload.fill_id,  # type: ignore[union-attr]
        order_id="o-2",
        filled_at=START + 2 * MINUTE,
    )
    assert by_symbol["MSFT"].causation_id == msft.id


async def test_events_that_are_not_fills_are_skipped(
    database: Database, clock: ManualClock
) -> None:
    notices = Notices()
    p = projection(database, clock, notify=notices)
    accepted = OrderAccepted(order_id="o-1", broker_order_id="b-1")
    account = await open_account(database, "alice")
    await p.handle([new_event(accepted, occurred_at=START, correlation_id="c", account_id=account)])
    assert (p.applied, notices.count) == (0, 0)
    assert await stored_positions(database, account) == {}


async def test_a_fill_of_an_unknown_account_keeps_its_position_and_announces_nothing(
    database: Database, clock: ManualClock
) -> None:
    ghost = new_account_id()
    p = projection(database, clock)
    await p.handle([fill_event(ghost, "AAPL", "buy", "1", "10")])
    assert (await stored_position(database, ghost, "AAPL")).position.quantity == 1
    assert await announced(database, ghost) == []


async def test_lags_and_outcomes_are_recorded(database: Database, clock: ManualClock) -> None:
    account = await open_account(database, "alice")
    metrics = Metrics()
    p = projection(database, clock, metrics=metrics, group="positions-metrics")
    clock.set(START + timedelta(seconds=2))
    event = fill_event(account, "AAPL", "buy", "1", "10", occurred_at=START)
    await deliver(p, [event], [event])
    value = metrics.registry.get_sample_value
    assert value("tradeloom_position_update_lag_seconds_count") == 1
    assert value("tradeloom_position_update_lag_seconds_sum") == 2.0
    assert value("tradeloom_projection_lag_seconds_count", {"group": "positions-metrics"}) == 1
    for outcome in ("applied", "duplicate"):
        labels = {"group": "positions-metrics", "outcome": outcome}
        assert value("tradeloom_events_projected_total", labels) == 1


@pytest.mark.parametrize("partial", [False, True])
async def test_the_projection_consumes_fill_events_from_the_bus(
    database: Database, clock: ManualClock, partial: bool
) -> None:
    account = await open_account(database, "alice")
    bus = MemoryBus(MemoryBroker(partitions=2))
    await bus.start()
    p = PositionProjection(bus, database, Outbox(clock), clock)
    await p.start()
    try:
        event = fill_event(account, "AAPL", "sell", "3", "20", partial=partial)
        await bus.publish(ORDER_EVENTS.name, event, account)

        async def quantity() -> D | None:
            rows = await stored_positions(database, account)
            row = rows.get((account, "AAPL"))
            return None if row is None else row.position.quantity

        expected: D | None = D(-3)
        await eventually_equals(quantity, expected, what="the fill reached the position")
    finally:
        await p.stop()
        await bus.close()

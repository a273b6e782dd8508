"""The order state updater on PostgreSQL: a batch costs the same few statements of the same
texts whatever its size, decimals and times survive the array round trip exactly, and two
processes applying overlapping batches at once queue behind each other instead of
deadlocking. (Its behaviour on both dialects is in tests/unit/oms/test_order_state.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, insert, text

from tests.helpers import eventually_equals
from tests.unit.oms.order_events import START, OrderStory
from tests.unit.oms.test_order_state import World, fill_id, reports
from tradeloom.domain.orders import OrderStatus
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBus
from tradeloom.oms.state import OrderStateUpdater
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.schema import processed_events

pytestmark = pytest.mark.postgres


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    await upgrade_database(postgres_url)
    db = Database(postgres_url)
    yield db
    await db.dispose()


@pytest.fixture
async def world(database: Database, unique: str) -> World:
    clock = ManualClock(START + timedelta(hours=1))
    return World(database, clock, OrderStateUpdater(MemoryBus(), database, clock), f"acc-{unique}")


@contextmanager
def statements(database: Database) -> Iterator[list[str]]:
    """Every statement sent to the server inside the block, as its text."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", record)


def filled_in_three_parts(account_id: str) -> OrderStory:
    """Four reports: the acceptance and three fills."""
    story = OrderStory(account_id)
    story.submitted(quantity="100", limit_price="10.00")
    story.accepted()
    story.fill("30", "9.97")
    story.fill("30", "9.98")
    story.fill("40", "10.00")
    return story


async def test_a_batch_costs_the_same_few_statements_whatever_its_size(world: World) -> None:
    one = await world.placed(filled_in_three_parts)
    many = [await world.placed(filled_in_three_parts) for _ in range(25)]
    small = reports(one)
    large = [event for story in many for event in reports(story)]
    assert (len(small), len(large)) == (4, 100)

    with statements(world.database) as for_small:
        await world.updater.handle(small)
    with statements(world.database) as for_large:
        await world.updater.handle(large)

    assert len(for_large) <= 6, "\n".join(for_large)
    assert for_large == for_small  # the same texts, so each is prepared once per connection
    for story in [one, *many]:
        order = await world.order(story.order_id)
        assert (order.status, order.average_fill_price) == (OrderStatus.FILLED, Decimal("9.985"))
    assert world.updater.applied == 104

    with statements(world.database) as for_redelivery:
        await world.updater.handle(large)
    assert len(for_redelivery) == 1, "a batch seen before is one insert that finds it all"


async def test_decimals_and_times_survive_the_arrays_exactly(world: World) -> None:
    thirds = OrderStory(world.account)
    thirds.submitted(quantity="3", limit_price="10.01")
    thirds.accepted()
    thirds.fill("1", "10")
    thirds.fill("2", "10.01")  # an average of 28 significant digits
    accepted_only = await world.placed(filled_in_three_parts)
    await world.place(thirds)

    await world.updater.handle([*reports(thirds), reports(accepted_only)[0]])

    order = await world.order(thirds.order_id)
    assert order.average_fill_price == Decimal("30.02") / 3
    assert str(order.average_fill_price) == "10.00666666666666666666666667"
    assert (order.limit_price, order.quantity) == (Decimal("10.01"), Decimal(3))
    other = await world.order(accepted_only.order_id)
    assert (other.status, other.average_fill_price) == (OrderStatus.ACCEPTED, None)
    updated_at = (await world.row(thirds.order_id))["updated_at"]
    assert updated_at == world.clock.now()
    assert updated_at.tzinfo is UTC  # type: ignore[attr-defined]


async def test_overlapping_batches_of_two_processes_queue_instead_of_deadlocking(
    world: World, postgres_url: str
) -> None:
    """Two consumers (two engines, as two processes) apply batches over the same orders at
    once, in opposite orders, half the last fills in both: each event and each fill lands
    exactly once, whichever commits first (fills commute)."""
    second = Database(postgres_url)
    other = OrderStateUpdater(MemoryBus(), second, world.clock)
    try:
        for _ in range(5):
            stories = [await world.placed(filled_in_three_parts) for _ in range(20)]
            await world.updater.handle([reports(story)[0] for story in stories])
            fills = [reports(story)[1:] for story in stories]
            firsts_up = [first for first, _, _ in fills]
            seconds_down = [second for _, second, _ in reversed(fills)]
            lasts_down = [last for _, _, last in reversed(fills)]
            await asyncio.gather(
                world.updater.handle([*firsts_up, *reversed(lasts_down[10:])]),
                other.handle([*seconds_down, *lasts_down]),
            )
            for story in stories:
                order = await world.order(story.order_id)
                assert (order.status, order.average_fill_price) == (
                    OrderStatus.FILLED,
                    Decimal("9.985"),
                )
                assert order.fill_ids == {fill_id(event) for event in reports(story)[1:]}
        assert world.updater.applied + other.applied == 5 * 80
    finally:
        await second.dispose()


async def test_twin_batches_held_up_midway_queue_instead_of_deadlocking(
    world: World, postgres_url: str
) -> None:
    """Redelivered to a second process while the first still works, a batch's events are
    recorded in one order by both (else each would hold an event the other waits for). A
    third transaction holds one event midway so that both batches are caught mid-statement."""
    stories = [await world.placed(filled_in_three_parts) for _ in range(10)]
    await world.updater.handle([reports(story)[0] for story in stories])
    batch = sorted((reports(story)[1] for story in stories), key=lambda e: e.id)
    second = Database(postgres_url)
    other = OrderStateUpdater(MemoryBus(), second, world.clock)
    try:
        async with world.database.engine.connect() as blocker:
            held = await blocker.begin()
            row = {"consumer": "oms-state", "event_id": batch[5].id, "processed_at": START}
            await blocker.execute(insert(processed_events), row)
            first = asyncio.create_task(world.updater.handle(batch))
            twin = asyncio.create_task(other.handle(list(reversed(batch))))
            await eventually_equals(lambda: waiting(second), 2, what="both batches wait")
            await held.rollback()
        await asyncio.gather(first, twin)
    finally:
        await second.dispose()

    assert world.updater.applied + other.applied == 10 + 10
    for story in stories:
        order = await world.order(story.order_id)
        assert (order.status, order.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 30)


async def waiting(database: Database) -> int:
    """How many transactions wait for a lock right now."""
    async with database.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")) or 0)

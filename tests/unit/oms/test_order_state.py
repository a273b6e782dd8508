"""The order state updater: a batch of order events applied to the ``orders`` rows through the
domain state machine, once per event and once per fill, whatever the redelivery, repetition
or batching; refused events and unknown orders skipped while the rest of the batch applies.

Runs on SQLite with the in-memory bus, and on PostgreSQL through the same tests (the
statement counts there are pinned in tests/integration/test_order_state_pg.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from structlog.testing import capture_logs

from tests.helpers import eventually_equals
from tests.unit.oms.order_events import (
    OrderStory,
    canceled_after_a_partial_fill,
    filled_in_two_parts,
    rejected,
    topic_of,
    with_a_refused_fill,
)
from tradeloom.domain.events import Event, OrderFilled, OrderPartiallyFilled, OrderSubmitted
from tradeloom.domain.ids import new_id
from tradeloom.domain.order_view import fold_order
from tradeloom.domain.orders import Order, OrderStatus
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBus
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.oms.repository import insert_orders, load_order, save_order
from tradeloom.oms.state import OrderStateUpdater
from tradeloom.storage.database import Database
from tradeloom.storage.schema import order_fills, orders, processed_events

Story = Callable[[str], OrderStory]


@dataclass
class World:
    database: Database
    clock: ManualClock
    updater: OrderStateUpdater
    account: str

    async def place(self, story: OrderStory) -> None:
        """Store the story's order row as placing it does (pending_new, nothing filled)."""
        submitted = story.events[0].payload
        assert isinstance(submitted, OrderSubmitted)
        order = Order(
            order_id=submitted.order_id,
            account_id=story.account_id,
            client_order_id=submitted.client_order_id,
            symbol=submitted.symbol,
            side=submitted.side,
            order_type=submitted.order_type,
            quantity=submitted.quantity,
            time_in_force=submitted.time_in_force,
            created_at=story.start,
            correlation_id=story.correlation_id,
            limit_price=submitted.limit_price,
        )
        async with self.database.transaction() as conn:
            assert await insert_orders(conn, [order]) == {order.order_id}

    async def placed(self, make: Story = filled_in_two_parts) -> OrderStory:
        story = make(self.account)
        await self.place(story)
        return story

    async def request_cancel(self, order_id: str) -> None:
        """What the command side does when the user asks to cancel."""
        await self._request(order_id, Order.request_cancel)

    async def request_replace(self, order_id: str) -> None:
        """What the command side does when the user asks to amend."""
        await self._request(order_id, Order.request_replace)

    async def _request(self, order_id: str, ask: Callable[[Order], None]) -> None:
        async with self.database.transaction() as conn:
            order = await load_order(conn, order_id, for_update=True)
            assert order is not None
            ask(order)
            await save_order(conn, order, self.clock.now())

    async def order(self, order_id: str) -> Order:
        async with self.database.connect() as conn:
            found = await load_order(conn, order_id)
        assert found is not None, f"order {order_id} is not stored"
        return found

    async def row(self, order_id: str) -> dict[str, object]:
        """The order's whole row and its fill ids, to compare before and after."""
        async with self.database.connect() as conn:
            row = (await conn.execute(select(orders).where(orders.c.order_id == order_id))).one()
            fills = await conn.execute(
                select(order_fills.c.fill_id).where(order_fills.c.order_id == order_id)
            )
            return {**row._mapping, "fills": sorted(fills.scalars())}


@pytest.fixture
async def world(database: Database, clock: ManualClock, unique: str) -> World:
    return World(database, clock, OrderStateUpdater(MemoryBus(), database, clock), f"acc-{unique}")


def reports(story: OrderStory) -> list[Event]:
    """The story's events execution publishes (what this updater consumes)."""
    return [event for event in story.events if topic_of(event) == ORDER_EVENTS.name]


def fill_id(event: Event) -> str:
    assert isinstance(event.payload, (OrderPartiallyFilled, OrderFilled))
    return event.payload.fill_id


def again(event: Event) -> Event:
    """The same report under a new event id (a broker repeating a fill, say)."""
    return msgspec.structs.replace(event, id=new_id())


async def test_an_acceptance_and_two_fills_in_one_batch_land_filled_at_the_average_price(
    world: World,
) -> None:
    story = await world.placed(filled_in_two_parts)  # 40 @ 9.90 then 60 @ 10.00
    await world.updater.handle(reports(story))

    order = await world.order(story.order_id)
    assert (order.status, order.filled_quantity) == (OrderStatus.FILLED, Decimal(100))
    assert order.average_fill_price == Decimal("9.96")
    assert order.fill_ids == {fill_id(event) for event in reports(story)[1:]}
    row = await world.row(story.order_id)
    assert row["updated_at"] == world.clock.now()
    assert world.updater.applied == 3


async def test_the_same_batch_delivered_twice_changes_nothing(world: World) -> None:
    story = await world.placed()
    batch = reports(story)
    await world.updater.handle(batch)
    before = await world.row(story.order_id)

    world.clock.advance(timedelta(minutes=5))  # a second write would move updated_at
    with capture_logs() as logs:
        await world.updater.handle(batch)

    assert await world.row(story.order_id) == before
    assert logs == []  # redelivered events are not even put to the state machine
    assert (world.updater.applied, world.updater.ignored) == (3, 3)


async def test_a_batch_reordered_against_events_already_applied_is_idempotent(
    world: World,
) -> None:
    story = await world.placed()
    accepted, first_fill, last_fill = reports(story)
    await world.updater.handle([accepted, first_fill])
    partial = await world.order(story.order_id)
    assert (partial.status, partial.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 40)

    await world.updater.handle([last_fill, first_fill, accepted, first_fill, last_fill])

    order = await world.order(story.order_id)
    assert (order.status, order.filled_quantity) == (OrderStatus.FILLED, Decimal(100))
    assert order.average_fill_price == Decimal("9.96")
    assert len(order.fill_ids) == 2
    assert world.updater.applied == 3


async def test_a_late_redelivery_does_not_undo_what_the_command_side_did_since(
    world: World,
) -> None:
    """A refused cancel redelivered after the user asked to cancel again must not refuse the
    new request: only the event id tells the two apart."""
    story = await world.placed()
    accepted = story.accepted()
    await world.request_cancel(story.order_id)
    refused = story.cancel_rejected("too late")
    await world.updater.handle([accepted, refused])
    assert (await world.order(story.order_id)).status is OrderStatus.ACCEPTED

    await world.request_cancel(story.order_id)
    await world.updater.handle([accepted, refused])

    assert (await world.order(story.order_id)).status is OrderStatus.PENDING_CANCEL


async def test_a_refused_amend_returns_the_row_to_where_it_was_with_its_terms(
    world: World,
) -> None:
    story = OrderStory(world.account)
    story.submitted(quantity="100", limit_price="10.00")
    await world.place(story)
    await world.updater.handle([story.accepted()])
    await world.request_replace(story.order_id)

    await world.updater.handle([story.replace_rejected("price moved")])

    order = await world.order(story.order_id)
    assert (order.status, order.quantity, order.reason) == (
        OrderStatus.ACCEPTED,
        Decimal(100),
        "price moved",
    )
    assert world.updater.applied == 2


async def test_a_refused_amend_leaves_a_cancel_asked_during_it_pending(world: World) -> None:
    """The cancel is still with the broker; when it is refused in turn, the order rests
    (accepted), with no amend pending any more."""
    story = OrderStory(world.account)
    story.submitted(quantity="100", limit_price="10.00")
    await world.place(story)
    await world.updater.handle([story.accepted()])
    await world.request_replace(story.order_id)
    await world.request_cancel(story.order_id)

    await world.updater.handle([story.replace_rejected("price moved")])
    waiting = await world.order(story.order_id)
    assert (waiting.status, waiting.status_before_request) == (
        OrderStatus.PENDING_CANCEL,
        OrderStatus.ACCEPTED,
    )

    await world.updater.handle([story.cancel_rejected("too late")])
    assert (await world.order(story.order_id)).status is OrderStatus.ACCEPTED


async def test_an_event_repeated_in_one_batch_is_applied_once(world: World) -> None:
    """By event id (the acceptance twice would be refused and warned about the second time)
    and, for a fill, by fill id too (a broker repeating a fill under a new event id)."""
    story = await world.placed()
    accepted, first_fill, _ = reports(story)
    batch = [accepted, first_fill, accepted, first_fill, again(first_fill)]
    with capture_logs() as logs:
        await world.updater.handle(batch)

    assert logs == []
    order = await world.order(story.order_id)
    assert (order.status, order.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 40)
    assert (await world.row(story.order_id))["fills"] == [fill_id(first_fill)]
    assert world.updater.applied == 2


async def test_an_unknown_order_is_skipped_and_the_rest_of_the_batch_applies(
    world: World,
) -> None:
    story = await world.placed()
    never_placed = filled_in_two_parts(world.account)
    batch = [reports(never_placed)[0], *reports(story), *reports(never_placed)[1:]]
    with capture_logs() as logs:
        await world.updater.handle(batch)

    assert (await world.order(story.order_id)).status is OrderStatus.FILLED
    unknown = [log for log in logs if log["event"] == "oms.event_for_unknown_order"]
    assert [(w["order_id"], w["log_level"]) for w in unknown] == [
        (never_placed.order_id, "warning")
    ] * 3
    async with world.database.connect() as conn:
        query = select(func.count()).where(orders.c.order_id == never_placed.order_id)
        assert await conn.scalar(query) == 0
        recorded = select(func.count()).where(
            processed_events.c.event_id.in_([e.id for e in reports(never_placed)])
        )
        assert await conn.scalar(recorded) == 3  # a redelivery is not even looked at


async def test_a_refused_transition_is_skipped_while_the_rest_of_the_batch_applies(
    world: World,
) -> None:
    canceled = await world.placed(canceled_after_a_partial_fill)  # 10, 3 filled, canceled
    filled = await world.placed(filled_in_two_parts)
    late_fill = canceled.fill("2", "4.90")  # after the cancel: refused
    accepted, partial_fill, was_canceled, _ = reports(canceled)
    other_accepted, *other_fills = reports(filled)
    batch = [accepted, partial_fill, other_accepted, was_canceled, late_fill, *other_fills]
    with capture_logs() as logs:
        await world.updater.handle(batch)

    stopped = await world.order(canceled.order_id)
    assert (stopped.status, stopped.filled_quantity) == (OrderStatus.CANCELED, Decimal(3))
    assert stopped.average_fill_price == Decimal("4.95")
    assert stopped.fill_ids == {fill_id(partial_fill)}
    done = await world.order(filled.order_id)
    assert (done.status, done.filled_quantity) == (OrderStatus.FILLED, Decimal(100))
    refused = [log for log in logs if log["event"] == "oms.event_not_applicable"]
    assert [(w["order_id"], w["type"]) for w in refused] == [(canceled.order_id, late_fill.type)]
    assert "cannot go from canceled" in refused[0]["why"]


async def test_an_overfill_is_refused_and_the_order_keeps_its_earlier_fills(
    world: World,
) -> None:
    story = await world.placed()
    accepted, first_fill, _ = reports(story)
    too_much = story.fill("61", "10.00")  # 40 + 61 > 100
    await world.updater.handle([accepted, first_fill, too_much])

    order = await world.order(story.order_id)
    assert (order.status, order.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 40)
    assert order.fill_ids == {fill_id(first_fill)}


async def test_orders_follow_the_events_published_on_the_bus(
    database: Database, clock: ManualClock, unique: str
) -> None:
    bus = MemoryBus()
    await bus.start()
    world = World(database, clock, OrderStateUpdater(bus, database, clock), f"acc-{unique}")
    stories = [await world.placed() for _ in range(5)]
    await world.updater.start()
    try:
        for story in stories:
            for event in reports(story):
                await bus.publish(ORDER_EVENTS.name, event, key=world.account)

        async def states() -> list[tuple[OrderStatus, Decimal]]:
            found = [await world.order(story.order_id) for story in stories]
            return [(order.status, order.filled_quantity) for order in found]

        await eventually_equals(states, [(OrderStatus.FILLED, Decimal(100))] * len(stories))
    finally:
        await world.updater.stop()
        await bus.close()


# Stories whose outcome does not depend on the command side's own writes (an amend moves
# the row to pending_replace before its report arrives, which this updater alone cannot do).
FOLDABLE = (filled_in_two_parts, canceled_after_a_partial_fill, rejected, with_a_refused_fill)


def redelivered_in_batches(events: list[Event], seed: int) -> list[list[Event]]:
    """The events in their order, each followed anywhere later by redeliveries of earlier
    ones (also under the same id inside one batch), cut into random batches."""
    rng = random.Random(seed)
    delivered: list[Event] = []
    for event in events:
        delivered.append(event)
        delivered.extend(rng.choice(delivered) for _ in range(rng.randint(0, 2)))
    batches: list[list[Event]] = []
    while delivered:
        size = rng.randint(1, len(delivered))
        batches.append(delivered[:size])
        delivered = delivered[size:]
    return batches


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(make=st.sampled_from(FOLDABLE), seed=st.integers(0, 2**32 - 1))
async def test_any_redelivery_and_batching_ends_where_the_in_order_fold_does(
    world: World, make: Story, seed: int
) -> None:
    story = await world.placed(make)  # a fresh order per example
    for batch in redelivered_in_batches(reports(story), seed):
        await world.updater.handle(batch)

    order = await world.order(story.order_id)
    view = fold_order(story.events).view
    assert view is not None
    assert (order.status, order.filled_quantity, order.average_fill_price) == (
        view.status,
        view.filled_quantity,
        view.average_fill_price,
    )

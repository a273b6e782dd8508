"""The order projection on SQLite and PostgreSQL: every order event recorded once, each view
folded from its order's whole history, whatever the delivery order, batching or repetition."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from structlog.testing import capture_logs

from tests.helpers import eventually_equals
from tests.unit.oms.conftest import ReadModel
from tests.unit.oms.order_events import (
    STORIES,
    OrderStory,
    filled_in_two_parts,
    topic_of,
    with_a_refused_fill,
)
from tests.unit.positions.world import record_history
from tests.unit.recorded_sql import recorded_statements
from tradeloom.domain.events import Event
from tradeloom.domain.order_view import OrderView, fold_order
from tradeloom.domain.orders import OrderStatus
from tradeloom.messaging.memory import MemoryBus
from tradeloom.oms.order_view import view_from_row, view_row
from tradeloom.oms.projection import OrderProjection
from tradeloom.storage.schema import order_history

Story = Callable[[str], OrderStory]


def folded(story: OrderStory) -> OrderView:
    view = fold_order(story.events).view
    assert view is not None
    return view


async def history_rows(model: ReadModel, order_id: str) -> int:
    query = select(func.count()).where(order_history.c.order_id == order_id)
    async with model.database.connect() as conn:
        return int(await conn.scalar(query) or 0)


def sample(model: ReadModel, name: str, **labels: str) -> float:
    value = model.metrics.registry.get_sample_value(name, {"group": "oms-projection", **labels})
    return value or 0.0


@pytest.mark.parametrize("make", STORIES, ids=lambda make: make.__name__)
def test_a_view_written_as_a_row_reads_back_as_the_same_view(make: Story) -> None:
    view = folded(make("acc-1"))
    row = view_row(view)
    assert row["order_id"] == view.order_id
    assert row["last_event_id"] == view.last_event_id
    assert view_from_row(row) == view


@pytest.mark.parametrize("make", STORIES, ids=lambda make: make.__name__)
async def test_each_story_is_stored_exactly_as_it_folds(model: ReadModel, make: Story) -> None:
    story = make(model.account)
    await model.projection.handle(story.events)
    stored = await model.queries.get(model.owner, story.order_id)
    assert stored == folded(story)
    assert await history_rows(model, story.order_id) == len(story.events)


async def test_a_filled_order_reads_back_exact_decimals_and_utc_times(model: ReadModel) -> None:
    story = filled_in_two_parts(model.account)
    await model.projection.handle(story.events)
    view = await model.queries.get(model.owner, story.order_id)
    assert view is not None
    assert view.status is OrderStatus.FILLED
    assert str(view.average_fill_price) == "9.96"
    assert str(view.limit_price) == "10.00"
    assert view.submitted_at == story.events[0].occurred_at
    assert view.submitted_at.utcoffset() is not None


async def test_reports_published_before_their_submission_reach_the_same_view(
    model: ReadModel,
) -> None:
    """Execution's topic runs ahead of the OMS's: the acceptance and the fills are consumed
    before the submission, across the two topics, through the in-memory bus."""
    story = filled_in_two_parts(model.account)
    bus = MemoryBus()
    await bus.start()
    projection = OrderProjection(bus, model.database, model.clock)
    await projection.start()
    try:
        for event in [*story.events[1:], story.events[0]]:
            await bus.publish(topic_of(event), event, key=model.account)
        expected: OrderView | None = folded(story)
        await eventually_equals(lambda: model.queries.get(model.owner, story.order_id), expected)
    finally:
        await projection.stop()
        await bus.close()


async def test_an_order_has_no_view_until_its_submission_arrives(model: ReadModel) -> None:
    story = filled_in_two_parts(model.account)
    submitted, *reports = story.events
    await model.projection.handle(reports)
    assert await model.queries.get(model.owner, story.order_id) is None
    waiting = await model.queries.history(model.owner, story.order_id)
    assert [entry.note for entry in waiting] == ["waiting for order.submitted"] * len(reports)

    await model.projection.handle([submitted])
    assert await model.queries.get(model.owner, story.order_id) == folded(story)


async def test_redelivery_in_any_order_changes_nothing_and_is_counted(model: ReadModel) -> None:
    story = filled_in_two_parts(model.account)
    await model.projection.handle(story.events)
    before = await model.queries.get(model.owner, story.order_id)

    await model.projection.handle(list(reversed(story.events)))
    for event in story.events:
        await model.projection.handle([event, event])

    assert await model.queries.get(model.owner, story.order_id) == before
    assert await history_rows(model, story.order_id) == len(story.events)
    count = len(story.events)
    assert sample(model, "tradeloom_events_projected_total", outcome="applied") == count
    assert sample(model, "tradeloom_events_projected_total", outcome="duplicate") == 3 * count
    assert sample(model, "tradeloom_projection_lag_seconds_count") == count
    assert sample(model, "tradeloom_projection_lag_seconds_sum") > 3500  # an hour behind


async def test_a_refused_event_is_kept_in_the_history_and_warned_about_once(
    model: ReadModel,
) -> None:
    story = with_a_refused_fill(model.account)
    late_fill = story.events[-1]
    with capture_logs() as logs:
        await model.projection.handle(story.events)
        await model.projection.handle(story.events)
    warnings = [log for log in logs if log["event"] == "oms.projection.event_refused"]
    assert [(w["event_id"], w["log_level"]) for w in warnings] == [(late_fill.id, "warning")]

    history = await model.queries.history(model.owner, story.order_id)
    assert [entry.event_id for entry in history] == [event.id for event in story.events]
    assert [entry.applied for entry in history] == [True] * 6 + [False]
    assert "cannot go from expired" in (history[-1].note or "")


async def test_two_topics_projecting_one_order_at_once_lose_nothing(model: ReadModel) -> None:
    """The commands batch and the reports batch of an order commit concurrently (PostgreSQL
    runs them in parallel): whichever commits second must fold the first one's events too."""
    stories = [filled_in_two_parts(model.account) for _ in range(20)]

    async def deliver(story: OrderStory) -> None:
        submitted, *reports = story.events
        await asyncio.gather(model.projection.handle([submitted]), model.projection.handle(reports))

    await asyncio.gather(*(deliver(story) for story in stories))
    for story in stories:
        assert await model.queries.get(model.owner, story.order_id) == folded(story)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[Story, int]:
    return draw(st.sampled_from(STORIES)), draw(st.integers(0, 2**32 - 1))


def batches_of(events: list[Event], seed: int) -> list[list[Event]]:
    """Every event at least once (some twice or three times), shuffled, in random batches."""
    rng = random.Random(seed)
    delivered = events + [rng.choice(events) for _ in range(rng.randint(0, 2 * len(events)))]
    rng.shuffle(delivered)
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
@given(delivery=deliveries())
async def test_any_shuffled_duplicated_batching_yields_the_in_order_view(
    model: ReadModel, delivery: tuple[Story, int]
) -> None:
    make, seed = delivery
    story = make(model.account)  # a fresh order per example
    for batch in batches_of(story.events, seed):
        await model.projection.handle(batch)
    assert await model.queries.get(model.owner, story.order_id) == folded(story)


# -- continuing views instead of refolding ---------------------------------------------------


async def test_a_batch_that_continues_its_orders_reads_no_history_back(model: ReadModel) -> None:
    """The usual flow (a submission, then its reports after it) continues each stored view:
    no history is read back, and on PostgreSQL a batch is three statements (lock the
    orders; record the events and read what each order had; upsert the views)."""
    stories = [filled_in_two_parts(model.account) for _ in range(3)]
    await model.projection.handle([story.events[0] for story in stories])
    with recorded_statements(model.database) as sent:
        await model.projection.handle([e for story in stories for e in story.events[1:]])
    assert not [s for s in sent if re.search(r"order_history\.event\b", s)], sent
    if model.database.dialect == "postgresql":
        assert len(sent) == 3, sent
    for story in stories:
        assert await model.queries.get(model.owner, story.order_id) == folded(story)


async def test_an_event_before_an_earlier_refused_one_refolds_the_order(
    model: ReadModel,
) -> None:
    """A cancel rejection with no cancel pending is refused and kept; when the cancel request
    that came before it arrives, the whole history is folded again, and both apply."""
    story = OrderStory(model.account)
    submitted, requested = story.submitted(), story.cancel_requested()
    refused = story.cancel_rejected("too late to cancel")
    await model.projection.handle([submitted, refused])
    await model.projection.handle([requested])
    view = await model.queries.get(model.owner, story.order_id)
    assert view == folded(story)
    assert view is not None
    assert view.reason == "too late to cancel"


async def test_a_view_that_misses_a_recorded_event_is_refolded(model: ReadModel) -> None:
    """An event in the history that the stored view does not count (written by other means
    than this projection) is folded in with the next event of the order."""
    story = filled_in_two_parts(model.account)
    submitted, accepted, first, last = story.events
    await model.projection.handle([submitted])
    await record_history(model.database, [accepted])
    await model.projection.handle([first, last])
    assert await model.queries.get(model.owner, story.order_id) == folded(story)

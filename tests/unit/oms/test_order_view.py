"""The order view fold: an order's events, in any order and with any duplicates, to one view."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.oms.order_events import (
    STORIES,
    OrderStory,
    amended_then_replaced,
    canceled_after_a_partial_fill,
    filled_in_two_parts,
    rejected,
    with_a_refused_fill,
)
from tradeloom.domain.events import OrderPartiallyFilled
from tradeloom.domain.ids import new_id
from tradeloom.domain.order_view import OrderView, fold_order
from tradeloom.domain.orders import OrderStatus

ACCOUNT = "acc-1"


def view_of(story: OrderStory) -> OrderView:
    view = fold_order(story.events).view
    assert view is not None, "the story has a submission, so it must have a view"
    return view


def test_placed_accepted_partially_then_fully_filled() -> None:
    story = OrderStory(ACCOUNT)
    submitted, accepted = story.submitted(quantity="100", limit_price="10.00"), story.accepted()
    partial = story.fill("40", "9.90")

    halfway = view_of(story)
    assert (halfway.status, halfway.filled_quantity, halfway.remaining_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal("40"),
        Decimal("60"),
    )
    assert halfway.is_open
    assert halfway.closed_at is None

    filled = story.fill("60", "10.00")
    view = view_of(story)
    assert view.status is OrderStatus.FILLED
    assert (view.filled_quantity, view.remaining_quantity) == (Decimal(100), Decimal(0))
    assert view.average_fill_price == Decimal("9.96")  # (40 * 9.90 + 60 * 10.00) / 100, exact
    assert view.submitted_at == submitted.occurred_at
    assert view.accepted_at == accepted.occurred_at
    assert view.last_fill_at == filled.occurred_at != partial.occurred_at
    assert view.closed_at == view.updated_at == filled.occurred_at
    assert (view.event_count, view.last_event_id) == (4, filled.id)
    assert not view.is_open
    assert view.correlation_id == story.correlation_id
    assert view.limit_price == Decimal("10.00")


def test_a_cancel_keeps_its_reason_and_the_partial_fill() -> None:
    view = view_of(canceled_after_a_partial_fill(ACCOUNT))
    assert view.status is OrderStatus.CANCELED
    assert view.reason == "user asked"
    assert (view.filled_quantity, view.remaining_quantity) == (Decimal(3), Decimal(7))
    assert view.closed_at is not None
    assert not view.is_open


def test_a_rejection_keeps_its_code_and_reason() -> None:
    view = view_of(rejected(ACCOUNT))
    assert view.status is OrderStatus.REJECTED
    assert view.reason == "instrument_halted: AAPL is halted"
    assert view.accepted_at is None
    assert view.closed_at is not None


def test_an_amend_is_pending_until_the_replacement_then_takes_the_new_terms() -> None:
    story = OrderStory(ACCOUNT)
    story.submitted(quantity="50", limit_price="20")
    story.accepted()
    story.amend_requested(quantity="30", limit_price="19.50")
    pending = view_of(story)
    assert (pending.status, pending.quantity, pending.limit_price) == (
        OrderStatus.PENDING_REPLACE,
        Decimal(50),
        Decimal(20),
    )
    story.replaced("30", "19.50")
    replaced = view_of(story)
    assert (replaced.status, replaced.quantity, replaced.limit_price) == (
        OrderStatus.ACCEPTED,
        Decimal(30),
        Decimal("19.50"),
    )
    assert view_of(amended_then_replaced(ACCOUNT)).status is OrderStatus.FILLED


def test_events_before_the_submission_wait_for_it_then_count() -> None:
    story = filled_in_two_parts(ACCOUNT)
    submitted, *reports = story.events

    waiting = fold_order(reports)
    assert waiting.view is None
    assert all(not o.applied and o.note == "waiting for order.submitted" for o in waiting.outcomes)
    assert fold_order([*reports, submitted]).view == view_of(story)


def test_a_refused_transition_is_kept_but_changes_nothing() -> None:
    story = with_a_refused_fill(ACCOUNT)
    fold = fold_order(story.events)
    assert fold.view is not None
    late_fill = story.events[-1]
    assert [o.event_id for o in fold.refused] == [late_fill.id]
    assert "cannot go from expired" in (fold.refused[0].note or "")
    assert fold.view.status is OrderStatus.EXPIRED
    assert fold.view.filled_quantity == Decimal(5)
    assert fold.view.event_count == 7
    assert fold.view.last_event_id == story.events[-2].id  # the expiry, the last change
    assert fold.view.reason == "too late to cancel"


def test_the_same_fill_under_two_event_ids_counts_once() -> None:
    story = OrderStory(ACCOUNT)
    story.submitted(quantity="10")
    story.accepted()
    fill = story.fill("4", "10")
    echo = msgspec.structs.replace(
        fill, id=new_id(), occurred_at=fill.occurred_at + timedelta(seconds=1)
    )
    fold = fold_order([*story.events, echo])
    assert fold.view is not None
    assert fold.view.filled_quantity == Decimal(4)
    assert isinstance(fill.payload, OrderPartiallyFilled)
    assert [(o.event_id, o.note) for o in fold.refused] == [
        (echo.id, f"fill {fill.payload.fill_id} was applied already")
    ]


def test_duplicates_change_nothing() -> None:
    story = canceled_after_a_partial_fill(ACCOUNT)
    assert fold_order(story.events * 3).view == view_of(story)


Story = Callable[[str], OrderStory]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[OrderStory, list[int]]:
    """A story and a delivery of it: every event at least once, in any order."""
    story: OrderStory = draw(st.sampled_from(STORIES))(ACCOUNT)
    count = len(story.events)
    extra = draw(st.lists(st.integers(0, count - 1), max_size=2 * count))
    order = draw(st.permutations([*range(count), *extra]))
    return story, list(order)


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_any_permutation_with_duplicates_folds_to_the_in_order_view(
    delivery: tuple[OrderStory, list[int]],
) -> None:
    story, order = delivery
    shuffled = [story.events[i] for i in order]
    assert fold_order(shuffled).view == view_of(story)

"""The order view fold: an order's events, in any order and with any duplicates, to one view."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.oms.order_events import (
    STORIES,
    OrderStory,
    amend_refused_while_a_cancel_waits,
    amended_then_replaced,
    canceled_after_a_partial_fill,
    filled_in_two_parts,
    rejected,
    with_a_refused_fill,
)
from tradeloom.domain.events import Event, OrderPartiallyFilled, OrderSubmitted
from tradeloom.domain.ids import new_id
from tradeloom.domain.order_view import OrderView, fold_order, resume_fold
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


def test_a_refused_amend_returns_the_order_to_where_it_was_with_its_terms() -> None:
    story = OrderStory(ACCOUNT)
    story.submitted(quantity="50", limit_price="20")
    story.accepted()
    story.amend_requested(quantity="30", limit_price="19.50")
    refused = story.replace_rejected("price moved")
    fold = fold_order(story.events)
    assert fold.refused == ()
    assert refused.type == "order.replace_rejected"
    view = view_of(story)
    assert (view.status, view.quantity, view.limit_price, view.reason) == (
        OrderStatus.ACCEPTED,
        Decimal(50),
        Decimal(20),
        "price moved",
    )
    assert view.last_event_id == refused.id


def test_an_amend_refused_while_a_cancel_waits_leaves_the_cancel_pending() -> None:
    story = amend_refused_while_a_cancel_waits(ACCOUNT)
    *before_the_cancel_is_answered, _ = story.events
    waiting = view_of_events(before_the_cancel_is_answered)
    assert (waiting.status, waiting.reason) == (OrderStatus.PENDING_CANCEL, "price moved")
    view = view_of(story)
    assert (view.status, view.quantity, view.reason) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal(10),
        "too late to cancel",
    )


def test_an_amend_refusal_with_no_amend_pending_is_refused_and_the_cancel_stays_pending() -> None:
    story = OrderStory(ACCOUNT)
    story.submitted()
    story.accepted()
    story.cancel_requested()
    stray = story.replace_rejected("price moved")
    fold = fold_order(story.events)
    assert fold.view is not None
    assert [(o.event_id, o.note) for o in fold.refused] == [
        (stray.id, f"order {story.order_id} has no replace pending")
    ]
    assert fold.view.status is OrderStatus.PENDING_CANCEL


def test_an_archived_cancel_rejection_still_ends_a_pending_amend() -> None:
    """Before ``order.replace_rejected``, a refused amend was told as ``order.cancel_rejected``:
    histories archived then still fold to the views they had."""
    story = OrderStory(ACCOUNT)
    story.submitted(quantity="50", limit_price="20")
    story.accepted()
    story.amend_requested(quantity="30")
    story.cancel_rejected("cannot replace")
    view = view_of(story)
    assert (view.status, view.quantity, view.reason) == (
        OrderStatus.ACCEPTED,
        Decimal(50),
        "cannot replace",
    )


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


# -- continuing a stored view ----------------------------------------------------------------


def latest_of(events: list[Event]) -> datetime | None:
    """What the read model keeps beside a view: the latest time among its events, the
    submission aside."""
    times = [e.occurred_at for e in events if not isinstance(e.payload, OrderSubmitted)]
    return max(times, default=None)


def view_of_events(events: list[Event]) -> OrderView:
    view = fold_order(events).view
    assert view is not None
    return view


def resumed(folded: list[Event], new: list[Event]) -> OrderView | None:
    fold = resume_fold(view_of_events(folded), latest_of(folded), new)
    return None if fold is None else fold.view


def test_an_acceptance_and_a_fill_continue_the_submitted_view() -> None:
    story = filled_in_two_parts(ACCOUNT)
    submitted, accepted, first, last = story.events
    assert resumed([submitted], [first, accepted]) == fold_order(story.events[:3]).view
    fold = resume_fold(view_of_events([submitted, accepted]), None, [last, first])
    assert fold is not None
    assert fold.view == view_of(story)
    assert [o.event_id for o in fold.outcomes] == [first.id, last.id]  # the new ones, in order


def test_a_view_is_not_continued_when_the_view_alone_cannot_tell() -> None:
    story = OrderStory(ACCOUNT)
    submitted, accepted = story.submitted(quantity="10"), story.accepted()
    first = story.fill("4", "10")
    cancel = story.cancel_requested()
    second = story.fill("6", "10")
    # A fill to an order with fills: the applied fill ids are not in the view.
    assert resumed([submitted, accepted, first], [second]) is None
    # A pending cancel: the status it returns to is not in the view.
    assert resumed([submitted, accepted, cancel], [story.canceled()]) is None
    # An event not after everything folded, and a submission, are out of order.
    assert resumed([submitted, first], [accepted]) is None
    assert resume_fold(view_of_events([submitted]), None, [submitted]) is None


def test_an_earlier_refused_event_stops_a_new_one_from_being_continued() -> None:
    """A refusal is kept: a cancel rejection with no cancel pending changes nothing, but once
    the cancel request that came before it arrives, the full fold applies both. The view
    (last changed by the submission) cannot show that: the latest recorded time can."""
    story = OrderStory(ACCOUNT)
    submitted, requested = story.submitted(), story.cancel_requested()
    refused = story.cancel_rejected("too late")
    folded = fold_order([submitted, refused])
    assert folded.view is not None
    assert folded.view.updated_at == submitted.occurred_at
    assert [o.event_id for o in folded.refused] == [refused.id]
    assert resume_fold(folded.view, latest_of([submitted, refused]), [requested]) is None
    assert fold_order(story.events).refused == ()  # the full fold applies both


@st.composite
def recorded_then_new(draw: st.DrawFn) -> tuple[OrderStory, list[Event], list[Event]]:
    """A story whose events are recorded in two parts: some set holding the submission
    (folded into the stored view), then the rest, in any order."""
    story: OrderStory = draw(st.sampled_from(STORIES))(ACCOUNT)
    submitted, *others = story.events
    first = draw(st.lists(st.sampled_from(others), unique_by=lambda e: e.id)) if others else []
    rest = [e for e in others if e not in first]
    return story, [submitted, *first], draw(st.permutations(rest))


@settings(max_examples=400, deadline=None)
@given(recorded_then_new())
def test_a_continued_view_is_the_full_fold_whenever_it_is_given(
    parts: tuple[OrderStory, list[Event], list[Event]],
) -> None:
    story, folded, new = parts
    continued = resumed(folded, new)
    assert continued is None or continued == view_of(story)


def test_every_story_told_in_order_is_continued_event_by_event_where_it_can_be() -> None:
    """In order, an event is declined only when it is a fill after a fill or comes while a
    request is pending; every other one is continued, to the full fold each time."""
    declined: dict[str, list[str]] = {}
    for make in STORIES:
        story = make(ACCOUNT)
        declined[make.__name__] = []
        for k in range(1, len(story.events)):
            view = resumed(story.events[:k], story.events[k : k + 1])
            if view is None:
                declined[make.__name__].append(story.events[k].type)
            else:
                assert view == fold_order(story.events[: k + 1]).view
    assert declined == {
        "filled_in_two_parts": ["order.filled"],
        "canceled_after_a_partial_fill": ["order.canceled"],
        "amended_then_replaced": ["order.replaced"],
        "rejected": [],
        "with_a_refused_fill": ["order.cancel_rejected", "order.partially_filled"],
        "amend_refused_while_a_cancel_waits": [
            "order.cancel_requested",
            "order.replace_rejected",
            "order.cancel_rejected",
        ],
    }

"""The order read model's fold: the events of one order, however they arrived, to one view.

An order's events travel on two topics (``order.commands``: submitted, cancel and amend
requests; ``order.events``: what execution reports). The bus keeps them in order per account
within a topic, not across topics, and delivers at least once; so an acceptance can arrive
before its submission and anything can arrive twice. The read model therefore keeps each
order's events as a set (by event id) and folds the whole set again whenever it grows. The
fold is a pure function of that set:

* the events are put in one canonical order: the ``OrderSubmitted`` first, then by
  ``occurred_at``, ties broken by event id (UUIDv7 ids sort by creation);
* each is applied through the domain :class:`~tradeloom.domain.orders.Order` state machine.
  One the state machine refuses (a fill after a cancel, a second acceptance) changes nothing
  and is reported as not applied, with the reason;
* there is no view until the set holds the order's ``OrderSubmitted``.

So delivering the set in any order, in any batches, with any duplicates, yields the same view.

Refolding the whole set for every new event reads the order's history back each time. Most
events come after everything already folded (an acceptance after its submission, a fill after
its acceptance), and then the stored view plus those events is enough:
:func:`resume_fold` continues from the view when that gives exactly what :func:`fold_order`
would, and says so when it cannot (an event out of order, a state the view does not keep), so
the caller refolds the whole set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import (
    Event,
    OrderAccepted,
    OrderAmendRequested,
    OrderCanceled,
    OrderCancelRejected,
    OrderCancelRequested,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderReplaced,
    OrderReplaceRejected,
    OrderSubmitted,
)
from tradeloom.domain.orders import (
    REQUEST_PENDING_STATUSES,
    Order,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)


@dataclass(frozen=True, slots=True)
class OrderView:
    """Where one order stands, as a user reads it. Amounts are exact, timestamps UTC.

    ``updated_at`` and ``last_event_id`` are those of the last event that changed the order
    (in the canonical order); ``event_count`` counts every event recorded for it, refused
    ones included. ``reason`` is why it was rejected or canceled (or why a cancel or replace
    request was refused)."""

    order_id: str
    account_id: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal
    filled_quantity: Decimal
    remaining_quantity: Decimal
    average_fill_price: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: OrderStatus
    is_open: bool
    reason: str | None
    correlation_id: str
    submitted_at: datetime
    accepted_at: datetime | None
    last_fill_at: datetime | None
    closed_at: datetime | None
    updated_at: datetime
    event_count: int
    last_event_id: str


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What the fold did with one event: applied, or not and why (``note``)."""

    event_id: str
    applied: bool
    note: str | None = None


@dataclass(frozen=True, slots=True)
class OrderFold:
    """The view (None until the order's submission is known) and each event's outcome, in
    the canonical order."""

    view: OrderView | None
    events: tuple[Event, ...]
    outcomes: tuple[EventOutcome, ...]

    @property
    def refused(self) -> tuple[EventOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if not outcome.applied)


def canonical_order(events: Iterable[Event]) -> list[Event]:
    """The events once each (by id), submission first, then by ``occurred_at`` and id."""
    unique = {event.id: event for event in events}
    return sorted(unique.values(), key=_fold_key)


def _fold_key(event: Event) -> tuple[int, datetime, str]:
    return (0 if isinstance(event.payload, OrderSubmitted) else 1, event.occurred_at, event.id)


def fold_order(events: Iterable[Event]) -> OrderFold:
    """Fold one order's events (any order, duplicates allowed) into its view."""
    ordered = canonical_order(events)
    if not ordered or not isinstance(ordered[0].payload, OrderSubmitted):
        waiting = [EventOutcome(e.id, False, "waiting for order.submitted") for e in ordered]
        return OrderFold(None, tuple(ordered), tuple(waiting))
    first = ordered[0]
    try:
        state = _Folding.start(first)
    except DomainError as exc:
        refused = [EventOutcome(e.id, False, f"the submission is invalid: {exc}") for e in ordered]
        return OrderFold(None, tuple(ordered), tuple(refused))
    outcomes = [EventOutcome(first.id, True)]
    outcomes += [state.apply(event) for event in ordered[1:]]
    return OrderFold(state.view(len(ordered)), tuple(ordered), tuple(outcomes))


def resume_fold(
    view: OrderView, latest: datetime | None, events: Iterable[Event]
) -> OrderFold | None:
    """``view`` after ``events``: what :func:`fold_order` gives for the events ``view`` was
    folded from plus ``events``, or None when the view alone cannot tell (refold then).

    ``latest`` is the latest ``occurred_at`` among the events ``view`` was folded from, the
    submission aside (None when there is only the submission). The view alone tells when:

    * every one of ``events`` sorts after all of those: none is a submission, and each
      occurred strictly after ``latest`` (at the same instant the event ids decide, and an
      earlier refused event might sort after a new one);
    * the view holds the whole state of the state machine: no cancel or replace is pending
      (the status the order returns to is not in the view), and no fill comes to an order
      with fills already (the ids of applied fills are not in the view, and a fill id
      repeated under another event id must be refused as the full fold refuses it).

    The fold's ``events`` and ``outcomes`` are those of ``events`` only.
    """
    ordered = canonical_order(events)
    if view.status in REQUEST_PENDING_STATUSES:
        return None
    has_fills = view.filled_quantity != 0
    for event in ordered:
        payload = event.payload
        if isinstance(payload, OrderSubmitted):
            return None
        if latest is not None and event.occurred_at <= latest:
            return None
        if has_fills and isinstance(payload, (OrderPartiallyFilled, OrderFilled)):
            return None
    state = _Folding.resume(view)
    outcomes = tuple(state.apply(event) for event in ordered)
    return OrderFold(state.view(view.event_count + len(ordered)), tuple(ordered), outcomes)


class _Folding:
    """The order being folded plus the moments the state machine does not keep."""

    def __init__(
        self,
        order: Order,
        *,
        updated_at: datetime,
        last_event_id: str,
        accepted_at: datetime | None = None,
        last_fill_at: datetime | None = None,
        closed_at: datetime | None = None,
    ) -> None:
        self.order = order
        self.updated_at = updated_at
        self.last_event_id = last_event_id
        self.accepted_at = accepted_at
        self.last_fill_at = last_fill_at
        self.closed_at = closed_at

    @classmethod
    def start(cls, submitted: Event) -> _Folding:
        """A fold that has applied the order's submission."""
        terms = submitted.payload
        assert isinstance(terms, OrderSubmitted)
        if submitted.account_id is None:
            raise DomainError("order.submitted has no account", code="invalid_order")
        order = Order(
            order_id=terms.order_id,
            account_id=submitted.account_id,
            client_order_id=terms.client_order_id,
            symbol=terms.symbol,
            side=terms.side,
            order_type=terms.order_type,
            quantity=terms.quantity,
            time_in_force=terms.time_in_force,
            created_at=submitted.occurred_at,
            correlation_id=submitted.correlation_id,
            limit_price=terms.limit_price,
            stop_price=terms.stop_price,
        )
        return cls(order, updated_at=submitted.occurred_at, last_event_id=submitted.id)

    @classmethod
    def resume(cls, view: OrderView) -> _Folding:
        """The fold that made ``view``, as far as the view keeps it: exact for the views
        :func:`resume_fold` accepts (no request pending, so no status to return to)."""
        order = Order(
            order_id=view.order_id,
            account_id=view.account_id,
            client_order_id=view.client_order_id,
            symbol=view.symbol,
            side=view.side,
            order_type=view.order_type,
            quantity=view.quantity,
            time_in_force=view.time_in_force,
            created_at=view.submitted_at,
            correlation_id=view.correlation_id,
            limit_price=view.limit_price,
            stop_price=view.stop_price,
            status=view.status,
            filled_quantity=view.filled_quantity,
            average_fill_price=view.average_fill_price,
            reason=view.reason,
        )
        return cls(
            order,
            updated_at=view.updated_at,
            last_event_id=view.last_event_id,
            accepted_at=view.accepted_at,
            last_fill_at=view.last_fill_at,
            closed_at=view.closed_at,
        )

    def apply(self, event: Event) -> EventOutcome:
        try:
            refusal = _transition(self.order, event)
        except DomainError as exc:
            refusal = str(exc)
        if refusal is not None:
            return EventOutcome(event.id, False, refusal)
        payload = event.payload
        if isinstance(payload, OrderAccepted) and self.accepted_at is None:
            self.accepted_at = event.occurred_at
        if isinstance(payload, (OrderPartiallyFilled, OrderFilled)):
            self.last_fill_at = payload.filled_at
        if not self.order.is_open and self.closed_at is None:
            self.closed_at = event.occurred_at
        self.updated_at, self.last_event_id = event.occurred_at, event.id
        return EventOutcome(event.id, True)

    def view(self, event_count: int) -> OrderView:
        order = self.order
        return OrderView(
            order_id=order.order_id,
            account_id=order.account_id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            time_in_force=order.time_in_force,
            quantity=order.quantity,
            filled_quantity=order.filled_quantity,
            remaining_quantity=order.remaining_quantity,
            average_fill_price=order.average_fill_price,
            limit_price=order.limit_price,
            stop_price=order.stop_price,
            status=order.status,
            is_open=order.is_open,
            reason=order.reason,
            correlation_id=order.correlation_id,
            submitted_at=order.created_at,
            accepted_at=self.accepted_at,
            last_fill_at=self.last_fill_at,
            closed_at=self.closed_at,
            updated_at=self.updated_at,
            event_count=event_count,
            last_event_id=self.last_event_id,
        )


def _transition(order: Order, event: Event) -> str | None:
    """Apply ``event`` to ``order``; the reason it was not applied, or None. The state
    machine raises a DomainError for a transition it refuses."""
    match event.payload:
        case OrderAccepted():
            order.accept()
        case OrderRejected(code=code, reason=reason):
            order.reject(f"{code}: {reason}")
        case OrderPartiallyFilled() | OrderFilled() as fill:
            if not order.apply_fill(fill.fill_id, fill.quantity, fill.price):
                return f"fill {fill.fill_id} was applied already"
        case OrderCanceled(reason=reason):
            order.cancel(reason)
        case OrderCancelRejected(reason=reason):
            order.refuse_request(reason)
        case OrderReplaceRejected(reason=reason):
            order.refuse_replace(reason)
        case OrderExpired():
            order.expire()
        case OrderReplaced(quantity=quantity, limit_price=limit, stop_price=stop):
            order.replace(quantity, limit, stop)
        case OrderCancelRequested():
            order.request_cancel()
        case OrderAmendRequested():
            order.request_replace()
        case OrderSubmitted():
            return "the order was submitted already"
        case _:
            return f"{event.type} is not an order event"
    return None

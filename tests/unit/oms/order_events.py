"""Events of one order, as the OMS and execution would publish them, with controlled times.

Each call returns the next event of the story, ``step`` after the previous one, so the story's
order is the canonical fold order. Tests then deliver those events shuffled, duplicated and
split across topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tradeloom.domain.events import (
    AnyPayload,
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
    new_event,
)
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.messaging.topics import ORDER_COMMANDS, ORDER_EVENTS

START = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
COMMANDS = (OrderSubmitted, OrderCancelRequested, OrderAmendRequested)


def topic_of(event: Event) -> str:
    """The topic an order event travels on."""
    return ORDER_COMMANDS.name if isinstance(event.payload, COMMANDS) else ORDER_EVENTS.name


@dataclass
class OrderStory:
    account_id: str
    start: datetime = START
    step: timedelta = timedelta(milliseconds=10)
    symbol: str = "AAPL"
    order_id: str = field(default_factory=new_id)
    correlation_id: str = field(default_factory=new_id)
    events: list[Event] = field(default_factory=list)
    quantity: Decimal = Decimal(0)
    filled: Decimal = Decimal(0)

    @property
    def now(self) -> datetime:
        return self.start + self.step * len(self.events)

    def _next(self, payload: AnyPayload) -> Event:
        event = new_event(
            payload,
            occurred_at=self.now,
            correlation_id=self.correlation_id,
            account_id=self.account_id,
        )
        self.events.append(event)
        return event

    def submitted(
        self,
        quantity: str = "100",
        limit_price: str | None = "10.00",
        side: Side = Side.BUY,
        time_in_force: TimeInForce = TimeInForce.GTC,
    ) -> Event:
        self.quantity = Decimal(quantity)
        return self._next(
            OrderSubmitted(
                order_id=self.order_id,
                client_order_id=f"c-{self.order_id}",
                symbol=self.symbol,
                side=side,
                order_type=OrderType.LIMIT if limit_price else OrderType.MARKET,
                quantity=self.quantity,
                time_in_force=time_in_force if limit_price else TimeInForce.DAY,
                limit_price=Decimal(limit_price) if limit_price else None,
            )
        )

    def accepted(self) -> Event:
        return self._next(
            OrderAccepted(order_id=self.order_id, broker_order_id=f"b-{self.order_id}")
        )

    def rejected(self, code: str, reason: str) -> Event:
        return self._next(OrderRejected(order_id=self.order_id, code=code, reason=reason))

    def fill(self, quantity: str, price: str) -> Event:
        """A partial fill, or the filling one when it completes the order."""
        self.filled += Decimal(quantity)
        kind = OrderFilled if self.filled >= self.quantity else OrderPartiallyFilled
        return self._next(
            kind(
                order_id=self.order_id,
                fill_id=new_id(),
                symbol=self.symbol,
                side=Side.BUY,
                quantity=Decimal(quantity),
                price=Decimal(price),
                filled_at=self.now,
                cumulative_quantity=self.filled,
                leaves_quantity=self.quantity - self.filled,
            )
        )

    def cancel_requested(self) -> Event:
        return self._next(OrderCancelRequested(order_id=self.order_id))

    def canceled(self, reason: str = "canceled by the user") -> Event:
        return self._next(OrderCanceled(order_id=self.order_id, reason=reason))

    def cancel_rejected(self, reason: str) -> Event:
        return self._next(OrderCancelRejected(order_id=self.order_id, reason=reason))

    def amend_requested(self, quantity: str | None = None, limit_price: str | None = None) -> Event:
        return self._next(
            OrderAmendRequested(
                order_id=self.order_id,
                quantity=Decimal(quantity) if quantity else None,
                limit_price=Decimal(limit_price) if limit_price else None,
            )
        )

    def replaced(self, quantity: str, limit_price: str | None = None) -> Event:
        self.quantity = Decimal(quantity)
        return self._next(
            OrderReplaced(
                order_id=self.order_id,
                quantity=self.quantity,
                limit_price=Decimal(limit_price) if limit_price else None,
            )
        )

    def replace_rejected(self, reason: str) -> Event:
        return self._next(OrderReplaceRejected(order_id=self.order_id, reason=reason))

    def expired(self) -> Event:
        return self._next(OrderExpired(order_id=self.order_id))


def filled_in_two_parts(account_id: str, start: datetime = START) -> OrderStory:
    story = OrderStory(account_id, start=start)
    story.submitted(quantity="100", limit_price="10.00")
    story.accepted()
    story.fill("40", "9.90")
    story.fill("60", "10.00")
    return story


def canceled_after_a_partial_fill(account_id: str, start: datetime = START) -> OrderStory:
    story = OrderStory(account_id, start=start)
    story.submitted(quantity="10", limit_price="5")
    story.accepted()
    story.fill("3", "4.95")
    story.cancel_requested()
    story.canceled("user asked")
    return story


def amended_then_replaced(account_id: str, start: datetime = START) -> OrderStory:
    story = OrderStory(account_id, start=start)
    story.submitted(quantity="50", limit_price="20")
    story.accepted()
    story.amend_requested(quantity="30", limit_price="19.50")
    story.replaced("30", "19.50")
    story.fill("30", "19.50")
    return story


def rejected(account_id: str, start: datetime = START) -> OrderStory:
    story = OrderStory(account_id, start=start)
    story.submitted()
    story.rejected("instrument_halted", "AAPL is halted")
    return story


def with_a_refused_fill(account_id: str, start: datetime = START) -> OrderStory:
    """A cancel that is refused, then a fill, then an expiry, then a fill the state machine
    refuses (the order expired)."""
    story = OrderStory(account_id, start=start)
    story.submitted(quantity="20", limit_price="7")
    story.accepted()
    story.cancel_requested()
    story.cancel_rejected("too late to cancel")
    story.fill("5", "7")
    story.expired()
    story.fill("5", "7")
    return story


def amend_refused_while_a_cancel_waits(account_id: str, start: datetime = START) -> OrderStory:
    """A partially filled order: an amend, a cancel asked during it, the amend refused (the
    cancel still pending), then the cancel refused: the order rests partially filled."""
    story = OrderStory(account_id, start=start)
    story.submitted(quantity="10", limit_price="5")
    story.accepted()
    story.fill("4", "5")
    story.amend_requested(quantity="8")
    story.cancel_requested()
    story.replace_rejected("price moved")
    story.cancel_rejected("too late to cancel")
    return story


STORIES = (
    filled_in_two_parts,
    canceled_after_a_partial_fill,
    amended_then_replaced,
    rejected,
    with_a_refused_fill,
    amend_refused_while_a_cancel_waits,
)

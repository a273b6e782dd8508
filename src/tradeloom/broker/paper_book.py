"""The pieces of the paper venue's book: a working order, the latest quote, and the pricing
rules (when a stop triggers, at what price an order can execute now).

Pure and single-threaded: the paper broker's thread is the only one that touches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from tradeloom.broker.reports import SubmitOrder
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.numbers import ZERO
from tradeloom.domain.orders import OrderType, Side


@dataclass(slots=True)
class Quote:
    """The latest known bid, ask and last of a symbol; a field an update leaves out keeps its
    previous value (a trade print does not erase the book)."""

    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None

    def merge(self, update: PriceUpdate) -> None:
        self.bid = update.bid if update.bid is not None else self.bid
        self.ask = update.ask if update.ask is not None else self.ask
        self.last = update.last if update.last is not None else self.last

    def touch(self, side: Side) -> Decimal | None:
        """The price a taker on ``side`` meets: the ask for a buy, the bid for a sell."""
        return self.ask if side is Side.BUY else self.bid


@dataclass(slots=True)
class WorkingOrder:
    """An order the venue has accepted and not yet finished, with its current terms."""

    request: SubmitOrder
    broker_order_id: str
    quantity: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    expires_at: datetime | None
    filled: Decimal = ZERO
    fills: int = 0
    triggered: bool = False

    @property
    def order_id(self) -> str:
        return self.request.order_id

    @property
    def symbol(self) -> str:
        return self.request.symbol

    @property
    def side(self) -> Side:
        return self.request.side

    @property
    def leaves(self) -> Decimal:
        return self.quantity - self.filled

    @property
    def takes_any_price(self) -> bool:
        """A market order, or a stop that triggered: it executes at the touch, whatever it is."""
        kind = self.request.order_type
        return kind is OrderType.MARKET or (kind is OrderType.STOP and self.triggered)

    def next_fill_id(self) -> str:
        self.fills += 1
        return f"{self.broker_order_id}-F{self.fills}"


def stop_hit(order: WorkingOrder, quote: Quote) -> bool:
    """A buy stop triggers when last or ask reaches the stop from below; a sell stop when last
    or bid reaches it from above."""
    stop = order.stop_price
    if stop is None:
        return True
    if order.side is Side.BUY:
        return any(p is not None and p >= stop for p in (quote.last, quote.ask))
    return any(p is not None and p <= stop for p in (quote.last, quote.bid))


def execution_price(order: WorkingOrder, quote: Quote, slippage: Decimal) -> Decimal | None:
    """The price ``order`` would execute at now, or None when it cannot.

    Market-like orders take the touch moved against them by ``slippage`` (never below zero);
    limit-like ones execute at the touch when it is at or better than their limit.
    """
    touch = quote.touch(order.side)
    if touch is None or not order.triggered:
        return None
    if order.takes_any_price:
        if order.side is Side.BUY:
            return touch + slippage
        return max(touch - slippage, ZERO)
    limit = order.limit_price
    assert limit is not None, "a resting non-market order always has a limit"
    crosses = touch <= limit if order.side is Side.BUY else touch >= limit
    return touch if crosses else None

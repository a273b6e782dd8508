"""Orders and their lifecycle.

The lifecycle is an explicit transition table (``ORDER_TRANSITIONS``): an order moves only along
its edges and anything else raises :class:`IllegalTransition`. Fills are applied by fill id, so
a fill reported twice, in any order relative to other fills, is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from tradeloom.domain.errors import IllegalTransition, InvalidOrder, Overfill
from tradeloom.domain.numbers import ZERO, exact, exact_or_none
from tradeloom.domain.time import require_utc


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


class OrderStatus(StrEnum):
    PENDING_NEW = "pending_new"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"


S = OrderStatus

TERMINAL_STATUSES: frozenset[OrderStatus] = frozenset({S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED})
OPEN_STATUSES: frozenset[OrderStatus] = frozenset(OrderStatus) - TERMINAL_STATUSES
REQUEST_PENDING_STATUSES: frozenset[OrderStatus] = frozenset({S.PENDING_CANCEL, S.PENDING_REPLACE})

# A broker may report a fill before its acknowledgement, and a fill may race a cancel or a
# replace request: those edges are legal. Leaving a pending_* status without the request
# taking effect (a cancel or replace refused by the broker) goes back to the status the order
# had before the request, which ``Order`` remembers: pending_new, accepted or partially_filled,
# or, for a cancel asked while a replace was pending, that pending_replace (the replace is
# still outstanding at the broker). Those returns are edges like any other.
ORDER_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING_NEW: frozenset(
        {
            S.ACCEPTED,
            S.REJECTED,
            S.PARTIALLY_FILLED,
            S.FILLED,
            S.PENDING_CANCEL,
            S.CANCELED,
            S.EXPIRED,
        }
    ),
    S.ACCEPTED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE, S.CANCELED, S.EXPIRED}
    ),
    S.PARTIALLY_FILLED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE, S.CANCELED, S.EXPIRED}
    ),
    S.PENDING_CANCEL: frozenset(
        {
            S.CANCELED,
            S.PENDING_NEW,
            S.ACCEPTED,
            S.PARTIALLY_FILLED,
            S.PENDING_REPLACE,
            S.FILLED,
            S.EXPIRED,
            S.REJECTED,
        }
    ),
    S.PENDING_REPLACE: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}

_ALLOWED_TIF: dict[OrderType, frozenset[TimeInForce]] = {
    OrderType.MARKET: frozenset({TimeInForce.DAY, TimeInForce.IOC, TimeInForce.FOK}),
    OrderType.LIMIT: frozenset(TimeInForce),
    OrderType.STOP: frozenset({TimeInForce.DAY, TimeInForce.GTC}),
    OrderType.STOP_LIMIT: frozenset({TimeInForce.DAY, TimeInForce.GTC}),
}


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in ORDER_TRANSITIONS[current]


def check_order_terms(
    order_type: OrderType,
    time_in_force: TimeInForce,
    quantity: Decimal,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
) -> None:
    """Raise :class:`InvalidOrder` when the terms of an order do not fit together.

    Market orders carry no prices and never rest (no GTC); stop orders trigger later, so they
    cannot be IOC or FOK; a limit price is required exactly for limit and stop-limit orders,
    a stop price exactly for stop and stop-limit orders. Every price and quantity is positive.
    """
    if quantity <= ZERO:
        raise InvalidOrder(f"quantity must be positive, got {quantity}", code="invalid_quantity")
    needs_limit = order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    needs_stop = order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
    if needs_limit != (limit_price is not None):
        verb = "requires" if needs_limit else "does not take"
        raise InvalidOrder(f"a {order_type} order {verb} a limit price", code="invalid_limit_price")
    if needs_stop != (stop_price is not None):
        verb = "requires" if needs_stop else "does not take"
        raise InvalidOrder(f"a {order_type} order {verb} a stop price", code="invalid_stop_price")
    for name, price in (("limit price", limit_price), ("stop price", stop_price)):
        if price is not None and price <= ZERO:
            raise InvalidOrder(f"{name} must be positive, got {price}", code="invalid_price")
    if time_in_force not in _ALLOWED_TIF[order_type]:
        raise InvalidOrder(
            f"time in force {time_in_force} does not fit a {order_type} order",
            code="invalid_time_in_force",
        )


@dataclass(slots=True)
class Order:
    """One order and its state. Mutated only through its methods, which enforce the table."""

    order_id: str
    account_id: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    created_at: datetime
    correlation_id: str
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    status: OrderStatus = OrderStatus.PENDING_NEW
    filled_quantity: Decimal = ZERO
    average_fill_price: Decimal | None = None
    reason: str | None = None
    fill_ids: set[str] = field(default_factory=set)
    status_before_request: OrderStatus | None = None

    def __post_init__(self) -> None:
        self.quantity = exact(self.quantity, field="quantity")
        self.limit_price = exact_or_none(self.limit_price, field="limit_price")
        self.stop_price = exact_or_none(self.stop_price, field="stop_price")
        require_utc(self.created_at, field="created_at")
        check_order_terms(
            self.order_type, self.time_in_force, self.quantity, self.limit_price, self.stop_price
        )

    @property
    def remaining_quantity(self) -> Decimal:
        return self.quantity - self.filled_quantity

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def accept(self) -> None:
        """The broker acknowledged the order. While a cancel or replace is pending, the
        acknowledgement only changes where the order returns to if the request is refused;
        it never ends the request."""
        if self.status in REQUEST_PENDING_STATUSES:
            if self.status_before_request is OrderStatus.PENDING_NEW:
                self.status_before_request = OrderStatus.ACCEPTED
                return
            raise IllegalTransition(f"order {self.order_id} was accepted already")
        self._move(OrderStatus.ACCEPTED)

    def reject(self, reason: str) -> None:
        self._move(OrderStatus.REJECTED)
        self.reason = reason

    def expire(self) -> None:
        self._move(OrderStatus.EXPIRED)

    def cancel(self, reason: str = "canceled") -> None:
        self._move(OrderStatus.CANCELED)
        self.reason = reason

    def request_cancel(self) -> None:
        """Ask for a cancel; asking again while one is pending (the broker never answered)
        is allowed and keeps the status the order returns to."""
        if self.status is OrderStatus.PENDING_CANCEL:
            return
        previous = self.status
        self._move(OrderStatus.PENDING_CANCEL)
        self.status_before_request = previous

    def request_replace(self) -> None:
        """Ask for new terms. Not while a cancel is pending: the table's pending_cancel to
        pending_replace edge is only a refused cancel going back to the replace before it."""
        if self.status is OrderStatus.PENDING_CANCEL:
            raise IllegalTransition(f"order {self.order_id} has a cancel pending")
        previous = self.status
        self._move(OrderStatus.PENDING_REPLACE)
        self.status_before_request = previous

    def refuse_request(self, reason: str) -> None:
        """A cancel or replace request was refused: go back, along an edge of the table, to
        where the order was before it. A cancel asked while a replace was pending goes back to
        that pending replace, which will itself return to the order's resting status."""
        if self.status not in REQUEST_PENDING_STATUSES:
            raise IllegalTransition(f"order {self.order_id} has no request pending")
        returning_to = self.status_before_request or self._resting_status()
        self._move(returning_to)
        if returning_to is OrderStatus.PENDING_REPLACE:
            self.status_before_request = self._resting_status()
        self.reason = reason

    def refuse_replace(self, reason: str) -> None:
        """A replace request was refused: the order keeps its terms. With the replace pending,
        the order goes back as :meth:`refuse_request` does. With a cancel asked during the
        replace, the cancel stays pending and a refusal of it will return the order to its
        resting status, the replace being over. Anything else has no replace to refuse."""
        if self.status is OrderStatus.PENDING_REPLACE:
            self.refuse_request(reason)
        elif (
            self.status is OrderStatus.PENDING_CANCEL
            and self.status_before_request is OrderStatus.PENDING_REPLACE
        ):
            self.status_before_request = self._resting_status()
            self.reason = reason
        else:
            raise IllegalTransition(f"order {self.order_id} has no replace pending")

    def replace(
        self,
        quantity: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> None:
        """Apply replaced terms; the order returns to accepted or partially filled."""
        new_quantity = self.quantity if quantity is None else exact(quantity, field="quantity")
        new_limit, new_stop = self.limit_price, self.stop_price
        if limit_price is not None:
            new_limit = exact(limit_price, field="limit_price")
        if stop_price is not None:
            new_stop = exact(stop_price, field="stop_price")
        check_order_terms(self.order_type, self.time_in_force, new_quantity, new_limit, new_stop)
        if new_quantity <= self.filled_quantity:
            raise InvalidOrder(
                f"new quantity {new_quantity} is not above the filled {self.filled_quantity}",
                code="invalid_quantity",
            )
        self._move(self._resting_status())
        self.quantity, self.limit_price, self.stop_price = new_quantity, new_limit, new_stop

    def apply_fill(self, fill_id: str, quantity: Decimal, price: Decimal) -> bool:
        """Apply one fill. Returns False, changing nothing, when ``fill_id`` was applied before."""
        if fill_id in self.fill_ids:
            return False
        quantity = exact(quantity, field="fill quantity")
        price = exact(price, field="fill price")
        if quantity <= ZERO:
            raise InvalidOrder(f"fill quantity must be positive, got {quantity}")
        filled = self.filled_quantity + quantity
        if filled > self.quantity:
            raise Overfill(f"order {self.order_id}: fill of {quantity} exceeds {self.quantity}")
        target = OrderStatus.FILLED if filled == self.quantity else OrderStatus.PARTIALLY_FILLED
        self._move(target)
        notional = (self.average_fill_price or ZERO) * self.filled_quantity + price * quantity
        self.average_fill_price = notional / filled
        self.filled_quantity = filled
        self.fill_ids.add(fill_id)
        return True

    def _resting_status(self) -> OrderStatus:
        """Where an acknowledged order with no request pending stands, by its fills. A fill
        ends a pending request, so the fills tell the status a pending replace came from."""
        return OrderStatus.PARTIALLY_FILLED if self.filled_quantity else OrderStatus.ACCEPTED

    def _move(self, target: OrderStatus) -> None:
        if not can_transition(self.status, target):
            raise IllegalTransition(
                f"order {self.order_id} cannot go from {self.status} to {target}"
            )
        self.status = target
        if target not in REQUEST_PENDING_STATUSES:
            self.status_before_request = None

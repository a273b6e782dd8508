"""Commands: immutable requests to change state. Each carries the correlation id of the user
action that caused it; every event the command leads to carries the same id.

Prices and quantities pass through :func:`~tradeloom.domain.numbers.exact` on construction:
a float is refused with :class:`~tradeloom.domain.errors.InvalidNumber` naming the field, and
an int or decimal text becomes a Decimal, so a command never carries an inexact amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tradeloom.domain.numbers import exact, exact_or_none
from tradeloom.domain.orders import OrderType, Side, TimeInForce


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaceOrder:
    account_id: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    correlation_id: str
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    user_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantity", exact(self.quantity, field="quantity"))
        _exact_prices(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOrder:
    account_id: str
    order_id: str
    correlation_id: str
    user_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AmendOrder:
    """New terms for a resting order; a field left as None keeps its current value."""

    account_id: str
    order_id: str
    correlation_id: str
    quantity: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    user_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantity", exact_or_none(self.quantity, field="quantity"))
        _exact_prices(self)


def _exact_prices(command: PlaceOrder | AmendOrder) -> None:
    for name in ("limit_price", "stop_price"):
        object.__setattr__(command, name, exact_or_none(getattr(command, name), field=name))

"""Structural validation of order terms against the instrument they trade.

This runs before risk: a symbol that does not exist, a quantity off the lot size or a price
off the tick size is refused with a machine-readable code, and nothing is reserved, persisted
or published.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from tradeloom.domain.errors import InvalidOrder
from tradeloom.domain.market import Instrument
from tradeloom.domain.numbers import is_multiple_of
from tradeloom.domain.orders import OrderType, TimeInForce, check_order_terms

MAX_QUANTITY = Decimal(10) ** 9  # beyond any real order: a typo, not a trade
MAX_PRICE = Decimal(10) ** 9  # likewise for a price


def validate_terms(
    instruments: Mapping[str, Instrument],
    symbol: str,
    order_type: OrderType,
    time_in_force: TimeInForce,
    quantity: Decimal,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
) -> Instrument:
    """Return the instrument when the terms are valid; raise :class:`InvalidOrder` otherwise."""
    instrument = instruments.get(symbol)
    if instrument is None:
        raise InvalidOrder(f"unknown symbol {symbol!r}", code="unknown_symbol")
    check_order_terms(order_type, time_in_force, quantity, limit_price, stop_price)
    if quantity > MAX_QUANTITY:
        raise InvalidOrder(f"quantity {quantity} is above {MAX_QUANTITY}", code="invalid_quantity")
    if not is_multiple_of(quantity, instrument.lot_size):
        raise InvalidOrder(
            f"quantity {quantity} is not a multiple of the lot size {instrument.lot_size}",
            code="invalid_quantity",
        )
    for name, price in (("limit price", limit_price), ("stop price", stop_price)):
        if price is not None and price > MAX_PRICE:
            raise InvalidOrder(f"{name} {price} is above {MAX_PRICE}", code="invalid_price")
        if price is not None and not is_multiple_of(price, instrument.tick_size):
            raise InvalidOrder(
                f"{name} {price} is not on the tick size {instrument.tick_size}",
                code="invalid_price",
            )
    return instrument

"""What the paper venue refuses, and why: the checks on a new order and on an amendment.

Each check answers None (fine) or a machine-readable code with a human reason, so the venue
turns a refusal into exactly one report.
"""

from __future__ import annotations

from decimal import Decimal

from tradeloom.broker.paper_book import Quote, WorkingOrder
from tradeloom.broker.reports import AmendRequest, SubmitOrder
from tradeloom.domain.errors import InvalidOrder
from tradeloom.domain.market import Instrument
from tradeloom.domain.numbers import is_multiple_of
from tradeloom.domain.orders import OrderType, check_order_terms

Refusal = tuple[str, str]
Terms = tuple[Decimal, Decimal | None, Decimal | None]


def check_submit(
    request: SubmitOrder,
    instrument: Instrument | None,
    *,
    halted: bool,
    quote: Quote | None,
    known: bool,
) -> Refusal | None:
    """Why the venue refuses ``request``, or None when it accepts it."""
    if known:
        return "duplicate_order", f"order {request.order_id} was already submitted"
    if instrument is None:
        return "unknown_symbol", f"unknown symbol {request.symbol}"
    if halted:
        return "instrument_halted", f"{request.symbol} is halted"
    terms = (request.quantity, request.limit_price, request.stop_price)
    refusal = _terms_refusal(request.order_type, request, terms, instrument)
    if refusal is not None:
        return refusal
    touch = quote.touch(request.side) if quote is not None else None
    if request.order_type is OrderType.MARKET and touch is None:
        return "no_market", f"no {request.side} side quote for {request.symbol}"
    return None


def check_amend(order: WorkingOrder, request: AmendRequest, instrument: Instrument) -> Terms | str:
    """The order's new terms, or the reason the amendment is refused."""
    terms: Terms = (
        order.quantity if request.quantity is None else request.quantity,
        order.limit_price if request.limit_price is None else request.limit_price,
        order.stop_price if request.stop_price is None else request.stop_price,
    )
    if terms[0] <= order.filled:
        return f"new quantity {terms[0]} is not above the filled {order.filled}"
    refusal = _terms_refusal(order.request.order_type, order.request, terms, instrument)
    return terms if refusal is None else refusal[1]


def _terms_refusal(
    order_type: OrderType, request: SubmitOrder, terms: Terms, instrument: Instrument
) -> Refusal | None:
    quantity, limit_price, stop_price = terms
    try:
        check_order_terms(order_type, request.time_in_force, quantity, limit_price, stop_price)
    except InvalidOrder as exc:
        return exc.code, exc.message
    if not is_multiple_of(quantity, instrument.lot_size):
        return "quantity_off_lot", f"quantity {quantity} is not a multiple of {instrument.lot_size}"
    for price in (limit_price, stop_price):
        if price is not None and not is_multiple_of(price, instrument.tick_size):
            return "price_off_tick", f"price {price} is not a multiple of {instrument.tick_size}"
    return None

"""Positions, cash and P&L from fills, by the average-cost method. Pure: no I/O.

A :class:`Position` is one (account, symbol): a signed quantity (long positive, short negative),
the cost basis of the open quantity, realized P&L and fees. :func:`apply_fill` folds one fill
into a position and returns a new frozen value; :func:`fold_position` folds a position's fills
in their canonical order; :class:`PositionBook` folds a stream of fills delivered in any order,
idempotently by fill id, and keeps each account's cash.

The method (average cost)
-------------------------
* A fill in the direction of the position (or from flat) adds to it: the average cost moves to
  the quantity-weighted average of the old average and the fill price.
* A fill against the position reduces it: the closed quantity realizes
  ``(price - average cost) * closed`` for a long, ``(average cost - price) * closed`` for a
  short, and the average cost of what stays open does not change.
* A fill larger than the position crosses zero: it closes the whole position (realizing as
  above) and opens the rest in the other direction at the fill price, the new average cost.
* Flat: quantity 0, cost basis 0, ``average_cost`` is ``None`` (there is nothing to average).

Fees are not folded into the average cost. Each fill's fee is added to ``fees`` and subtracted
from ``realized_pnl`` when it is paid (opening fills too), so ``realized_pnl`` is **net of
fees**; ``gross_realized_pnl`` is the same before fees. A negative fee is a rebate.

Worked example (no fees)::

    buy  100 @ 10   ->  long 100, avg 10,   realized    0
    buy  100 @ 12   ->  long 200, avg 11,   realized    0
    sell 150 @ 13   ->  long  50, avg 11,   realized  300   (13 - 11) * 150
    sell 100 @ 9    ->  short 50, avg 9,    realized  200   (9 - 11) * 50 = -100 on the 50 closed
    buy   50 @ 8    ->  flat,     avg None, realized  250   (9 - 8) * 50 = +50

Cash moves by :func:`cash_delta` (a buy pays ``quantity * price + fee``, a sell receives
``quantity * price - fee``): here -1000 - 1200 + 1950 + 900 - 400 = 250, the realized P&L.

Exactness
---------
The state kept is the **cost basis** (the signed cost of the open quantity: positive for a
long, negative for a short), not the average cost, which is derived (``cost_basis /
quantity``). Adding, and closing a whole position, are exact Decimal sums and products (done in
a context that raises rather than rounds). Closing part of a position removes
``cost_basis * closed / open`` from the basis; when that quotient does not terminate
(buy 1 @ 1, buy 2 @ 2, sell 1) it is rounded half-even to :data:`COST_QUANTUM` and the
remainder stays in the basis. So no amount is ever lost: for every position and price,
``realized_pnl + unrealized_pnl(position, price)`` equals the sum of the fills' cash deltas
plus ``quantity * price`` exactly, and a position closed to flat has realized exactly its
cash flow. Persist ``cost_basis`` (not the rounded ``average_cost``) to rebuild a position.

Idempotency and order
---------------------
A fill is identified by its ``fill_id``: delivered again, at any later point (not only as a
repeat of the last fill), it changes nothing; the same id with different terms is not a
redelivery but a bug (:class:`ConflictingFill`).

Average cost depends on the order fills are applied in (it decides how P&L splits between
realized and unrealized), and delivery order is not a property of the data: a redelivery, a
rebuild from the archive or a late broker report can present the same fills in another
order. So positions use one **canonical order**, by ``(filled_at, fill_id)`` (time of
execution, ties broken by the fill id; :attr:`Fill.sort_key`), and a position is by
definition the fold of its distinct fills in that order, **whatever order they were delivered
in**. :class:`PositionBook` and the positions projection apply a fill that sorts after every
fill already applied to its position incrementally (the usual case), and refold the position
from all its fills when one arrives late (:func:`fold_position`). Quantity, cash and fees are
sums and never depend on order; fills of different (account, symbol) pairs never affect each
other.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)

from tradeloom.domain.errors import DomainError, InvalidNumber
from tradeloom.domain.events import Event, OrderFilled, OrderPartiallyFilled
from tradeloom.domain.numbers import ZERO, exact
from tradeloom.domain.orders import Side
from tradeloom.domain.time import require_utc

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""When a fill built without a time sorts (before every real fill)."""

COST_QUANTUM = Decimal("1e-12")
"""The grid a non-terminating share of a cost basis is rounded to (half-even)."""

_PRECISION = 100
# Sums and products of fill amounts are exact in this context; if one ever were not, it raises
# (decimal.Inexact) instead of rounding money away.
_EXACT = Context(prec=_PRECISION, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


class InvalidFill(DomainError, ValueError):
    """A fill whose quantity or price cannot be applied (not positive)."""

    code = "invalid_fill"


class ConflictingFill(DomainError):
    """A fill id seen before came back with different terms: not a redelivery but a bug."""

    code = "conflicting_fill"


@dataclass(frozen=True, slots=True)
class Position:
    """One account's position in one symbol. Immutable: :func:`apply_fill` returns a new one.

    ``quantity`` is signed (long positive, short negative); ``cost_basis`` is the signed cost
    of the open quantity (0 when flat); ``realized_pnl`` is net of ``fees``.
    """

    account_id: str
    symbol: str
    quantity: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    def __post_init__(self) -> None:
        for name in ("quantity", "cost_basis", "realized_pnl", "fees"):
            object.__setattr__(self, name, exact(getattr(self, name), field=name))
        if self.quantity == ZERO and self.cost_basis != ZERO:
            raise InvalidNumber(f"a flat position has no cost basis, got {self.cost_basis}")

    @property
    def is_flat(self) -> bool:
        return self.quantity == ZERO

    @property
    def average_cost(self) -> Decimal | None:
        """Cost per unit of the open quantity (positive for longs and shorts); None when flat.

        Derived from the cost basis; it may be rounded to 28 significant digits (display)."""
        if self.quantity == ZERO:
            return None
        return self.cost_basis / self.quantity

    @property
    def gross_realized_pnl(self) -> Decimal:
        """Realized P&L before fees."""
        with localcontext(_EXACT):
            return self.realized_pnl + self.fees


def _positive(value: Decimal, name: str) -> Decimal:
    number = exact(value, field=name)
    if number <= ZERO:
        raise InvalidFill(f"{name} must be positive, got {number}")
    return number


def _share(basis: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """``basis * part / whole``: exact when it terminates, else rounded to COST_QUANTUM."""
    context = Context(prec=_PRECISION, traps=[InvalidOperation, DivisionByZero, Overflow])
    share = context.divide(context.multiply(basis, part), whole)
    if context.flags[Inexact]:
        share = share.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN, context=context)
    return share


def signed_quantity(side: Side, quantity: Decimal) -> Decimal:
    """``quantity`` as a change of position: positive for a buy, negative for a sell."""
    return quantity if side is Side.BUY else -quantity


def apply_fill(
    position: Position, side: Side, quantity: Decimal, price: Decimal, fee: Decimal = ZERO
) -> Position:
    """The position after one fill, by the average-cost method (see the module docstring)."""
    quantity = _positive(quantity, "fill quantity")
    price = _positive(price, "fill price")
    return _after(position, side, quantity, price, exact(fee, field="fee"))


def _after(
    position: Position, side: Side, quantity: Decimal, price: Decimal, fee: Decimal
) -> Position:
    """:func:`apply_fill` of terms already checked (a :class:`Fill`'s are, when it is made)."""
    with localcontext(_EXACT):
        delta = signed_quantity(side, quantity)
        held, basis, realized = position.quantity, position.cost_basis, position.realized_pnl
        if held == ZERO or (held > ZERO) == (delta > ZERO):
            held, basis = held + delta, basis + delta * price
        else:
            direction = 1 if held > ZERO else -1
            open_quantity = abs(held)
            closed = min(quantity, open_quantity)
            released = basis if closed == open_quantity else _share(basis, closed, open_quantity)
            # Closing a long sells (cash in); closing a short buys (cash out).
            realized += direction * closed * price - released
            held, basis = held + delta, basis - released
            if held == ZERO:
                held, basis = ZERO, ZERO
            elif quantity > open_quantity:  # crossed zero: the rest opens at the fill price
                basis = held * price
        return Position(
            position.account_id, position.symbol, held, basis, realized - fee, position.fees + fee
        )


def cash_delta(side: Side, quantity: Decimal, price: Decimal, fee: Decimal = ZERO) -> Decimal:
    """How a fill moves the account's cash: a buy pays ``quantity * price + fee``, a sell
    receives ``quantity * price - fee``."""
    quantity = _positive(quantity, "fill quantity")
    price = _positive(price, "fill price")
    return _cash_moved(side, quantity, price, exact(fee, field="fee"))


def _cash_moved(side: Side, quantity: Decimal, price: Decimal, fee: Decimal) -> Decimal:
    """:func:`cash_delta` of terms already checked."""
    with localcontext(_EXACT):
        notional = quantity * price
        return -(notional + fee) if side is Side.BUY else notional - fee


def market_value(position: Position, last_price: Decimal) -> Decimal:
    """Signed value of the position at ``last_price`` (a short is worth a negative amount)."""
    last_price = exact(last_price, field="last price")
    with localcontext(_EXACT):
        return position.quantity * last_price


def unrealized_pnl(position: Position, last_price: Decimal) -> Decimal:
    """P&L of the open quantity if it were closed at ``last_price`` (0 when flat)."""
    last_price = exact(last_price, field="last price")
    with localcontext(_EXACT):
        return position.quantity * last_price - position.cost_basis


def total_pnl(position: Position, last_price: Decimal) -> Decimal:
    """Realized (net of fees) plus unrealized P&L at ``last_price``."""
    with localcontext(_EXACT):
        return position.realized_pnl + unrealized_pnl(position, last_price)


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution as positions see it. ``fill_id`` is the idempotency key; every other
    field is a term that a redelivery must repeat. ``filled_at`` (UTC) and ``fill_id`` give
    the canonical order; a fill built without a time (tests, tools) sorts at the epoch, by id.
    """

    fill_id: str
    account_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal = ZERO
    filled_at: datetime = EPOCH
    order_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantity", _positive(self.quantity, "fill quantity"))
        object.__setattr__(self, "price", _positive(self.price, "fill price"))
        object.__setattr__(self, "fee", exact(self.fee, field="fee"))
        require_utc(self.filled_at, field="filled_at")

    @property
    def cash_delta(self) -> Decimal:
        return _cash_moved(self.side, self.quantity, self.price, self.fee)

    @property
    def sort_key(self) -> tuple[datetime, str]:
        """The canonical order of fills: by ``filled_at``, ties by ``fill_id``."""
        return (self.filled_at, self.fill_id)


def fill_from_event(event: Event) -> Fill:
    """The :class:`Fill` of an ``order.filled`` or ``order.partially_filled`` event."""
    payload = event.payload
    if not isinstance(payload, OrderFilled | OrderPartiallyFilled):
        raise TypeError(f"event {event.id} of type {event.type} is not a fill")
    if event.account_id is None:
        raise InvalidFill(f"fill event {event.id} names no account")
    return Fill(
        fill_id=payload.fill_id,
        account_id=event.account_id,
        symbol=payload.symbol,
        side=payload.side,
        quantity=payload.quantity,
        price=payload.price,
        fee=payload.fee,
        filled_at=payload.filled_at,
        order_id=payload.order_id,
    )


def exact_sum(amounts: Iterable[Decimal], start: Decimal = ZERO) -> Decimal:
    """``start`` plus ``amounts``, exactly (raises rather than rounds)."""
    with localcontext(_EXACT):
        return sum(amounts, exact(start, field="amount"))


def cash_after(cash: Decimal, fills: Iterable[Fill]) -> Decimal:
    """``cash`` moved by every fill's cash delta, exactly (a sum: the order does not matter)."""
    return exact_sum((fill.cash_delta for fill in fills), cash)


def canonical_order(fills: Iterable[Fill]) -> list[Fill]:
    """``fills`` sorted by :attr:`Fill.sort_key`: the order a position applies them in."""
    return sorted(fills, key=lambda fill: fill.sort_key)


def fold_position(
    account_id: str, symbol: str, fills: Iterable[Fill], start: Position | None = None
) -> Position:
    """``start`` (flat by default) after ``fills`` of (account_id, symbol), applied once each in
    canonical order. Folding from flat gives *the* position of a set of fills; folding onto
    ``start`` is the same only when every fill sorts after those ``start`` was folded from."""
    position = start if start is not None else Position(account_id, symbol)
    for fill in canonical_order(fills):
        if (fill.account_id, fill.symbol) != (account_id, symbol):
            raise ValueError(f"fill {fill.fill_id} is not of {account_id}/{symbol}")
        position = _after(position, fill.side, fill.quantity, fill.price, fill.fee)
    return position


def mark_price(bid: Decimal | None, ask: Decimal | None, last: Decimal | None) -> Decimal | None:
    """The price open positions are valued at: the mid of bid and ask when both are quoted,
    else the last trade; None when neither is known (or the result is not positive), so an
    unknown value is never shown as zero."""
    if bid is not None and ask is not None and bid > ZERO and ask > ZERO:
        with localcontext(_EXACT):
            return (bid + ask) / 2
    if last is not None and last > ZERO:
        return last
    return None


@dataclass
class PositionBook:
    """Positions per (account, symbol) and cash per account, from fills applied once each.

    ``apply`` remembers every fill id: a fill seen before (at any point, not only the last
    one) changes nothing, and one that comes back with different terms raises
    :class:`ConflictingFill`. Each position is the fold of its distinct fills in canonical
    order whatever the delivery order: a fill that sorts after the position's last one is
    applied incrementally, an earlier one refolds the position. Not thread-safe: one consumer
    owns it. ``cash`` is the net cash flow of the fills (deposits are not fills).
    """

    _positions: dict[tuple[str, str], Position] = field(default_factory=dict, repr=False)
    _fills: dict[tuple[str, str], list[Fill]] = field(default_factory=dict, repr=False)
    _cash: dict[str, Decimal] = field(default_factory=dict, repr=False)
    _applied: dict[str, Fill] = field(default_factory=dict, repr=False)

    def apply(self, fill: Fill) -> Position | None:
        """Apply ``fill`` once. Returns the updated position, or None for a redelivery."""
        seen = self._applied.get(fill.fill_id)
        if seen is not None:
            if seen != fill:
                raise ConflictingFill(f"fill {fill.fill_id} came back with different terms")
            return None
        key = (fill.account_id, fill.symbol)
        fills = self._fills.setdefault(key, [])
        if not fills or fills[-1].sort_key < fill.sort_key:
            fills.append(fill)
            position = fold_position(*key, [fill], start=self.position(*key))
        else:  # a late fill: place it and refold
            insort(fills, fill, key=lambda f: f.sort_key)
            position = fold_position(*key, fills)
        cash = cash_after(self._cash.get(fill.account_id, ZERO), [fill])
        self._positions[key] = position
        self._cash[fill.account_id] = cash
        self._applied[fill.fill_id] = fill
        return position

    def apply_all(self, fills: Iterable[Fill]) -> int:
        """Apply fills in order; returns how many were new."""
        return sum(1 for fill in fills if self.apply(fill) is not None)

    def has_applied(self, fill_id: str) -> bool:
        return fill_id in self._applied

    def position(self, account_id: str, symbol: str) -> Position:
        """The position, flat if the account never traded the symbol."""
        found = self._positions.get((account_id, symbol))
        return found if found is not None else Position(account_id, symbol)

    def fills(self, account_id: str, symbol: str) -> list[Fill]:
        """The distinct fills of the position, in canonical order."""
        return list(self._fills.get((account_id, symbol), ()))

    def positions(self, account_id: str) -> list[Position]:
        """Every position the account has traded (flat ones too), by symbol."""
        return sorted(
            (p for (account, _), p in self._positions.items() if account == account_id),
            key=lambda p: p.symbol,
        )

    def accounts(self) -> list[str]:
        """Every account with at least one fill, sorted."""
        return sorted(self._cash)

    def cash(self, account_id: str) -> Decimal:
        return self._cash.get(account_id, ZERO)

    def equity(self, account_id: str, last_prices: Mapping[str, Decimal]) -> Decimal:
        """Cash plus the market value of every open position. A position without a last
        price raises KeyError: an unknown value is not treated as zero."""
        total = self.cash(account_id)
        for position in self.positions(account_id):
            if not position.is_flat:
                value = market_value(position, last_prices[position.symbol])
                with localcontext(_EXACT):
                    total += value
        return total


def replay(fills: Iterable[Fill]) -> PositionBook:
    """A book built from ``fills`` delivered in this order (redeliveries included and
    ignored); the result is the same for every order of the same fills."""
    book = PositionBook()
    book.apply_all(fills)
    return book

"""Positions, cash and P&L from fills, by the average-cost method. Pure: no I/O.

A :class:`Position` is one (account, symbol): a signed quantity (long positive, short negative),
the cost basis of the open quantity, realized P&L and fees. :func:`apply_fill` folds one fill
into a position and returns a new frozen value; :class:`PositionBook` folds a stream of fills
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
:class:`PositionBook` remembers every fill id it applied: a fill delivered again, at any later
point (not only a repeat of the last fill), changes nothing. Distinct fills are applied in the
order they are first delivered, which for the projection is the order of the account's event
stream (events of one account are consumed in order), so a rebuild from the archive applies
them in the same order as the live view did. The order matters only for how P&L splits between
realized and unrealized: quantity, cash, fees and ``realized + unrealized`` at any price do not
depend on it, and fills of different (account, symbol) pairs never affect each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
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
    fee = exact(fee, field="fee")
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
        return replace(
            position,
            quantity=held,
            cost_basis=basis,
            realized_pnl=realized - fee,
            fees=position.fees + fee,
        )


def cash_delta(side: Side, quantity: Decimal, price: Decimal, fee: Decimal = ZERO) -> Decimal:
    """How a fill moves the account's cash: a buy pays ``quantity * price + fee``, a sell
    receives ``quantity * price - fee``."""
    quantity = _positive(quantity, "fill quantity")
    price = _positive(price, "fill price")
    fee = exact(fee, field="fee")
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
    """One execution as positions see it. ``fill_id`` is the idempotency key."""

    fill_id: str
    account_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal = ZERO

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantity", _positive(self.quantity, "fill quantity"))
        object.__setattr__(self, "price", _positive(self.price, "fill price"))
        object.__setattr__(self, "fee", exact(self.fee, field="fee"))

    @property
    def cash_delta(self) -> Decimal:
        return cash_delta(self.side, self.quantity, self.price, self.fee)


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
    )


@dataclass
class PositionBook:
    """Positions per (account, symbol) and cash per account, from fills applied once each.

    ``apply`` remembers every fill id: a fill seen before (at any point, not only the last
    one) changes nothing, and one that comes back with different terms raises
    :class:`ConflictingFill`. Distinct fills are applied in the order of their first delivery,
    which is the order of the account's event stream. Not thread-safe: one consumer owns it.
    ``cash`` is the net cash flow of the fills (deposits are not fills).
    """

    _positions: dict[tuple[str, str], Position] = field(default_factory=dict, repr=False)
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
        position = apply_fill(self.position(*key), fill.side, fill.quantity, fill.price, fill.fee)
        with localcontext(_EXACT):
            cash = self._cash.get(fill.account_id, ZERO) + fill.cash_delta
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

    def positions(self, account_id: str) -> list[Position]:
        """Every position the account has traded (flat ones too), by symbol."""
        return sorted(
            (p for (account, _), p in self._positions.items() if account == account_id),
            key=lambda p: p.symbol,
        )

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
    """A book built from ``fills`` in order (redeliveries included and ignored)."""
    book = PositionBook()
    book.apply_all(fills)
    return book

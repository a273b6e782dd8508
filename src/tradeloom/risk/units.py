"""Exact amounts as the integers the cache scripts work on.

Lua (Redis's script language) has only doubles, which hold integers exactly up to 2**53.
Money and quantities therefore live in the cache as scaled integers in decimal text:

* money: ``MONEY_SCALE`` = 10**4 units per currency unit (a ten-thousandth of a dollar);
* quantities: ``QUANTITY_SCALE`` = 10**8 units per share or coin (a satoshi).

Every scaled value a script stores or receives must satisfy ``|v| <= MAX_UNITS`` = 2**51,
so a bound summing up to four of them stays within 2**53 and is exact in Lua. That allows
money up to about 225 billion and quantities up to about 22.5 million per position or order;
:func:`money_units` and :func:`quantity_units` refuse anything larger with
:class:`OutOfRange`.

Rounding is always against the account: what it reserves or pays is rounded up, what it
receives or holds as cash is rounded down. A quantity finer than 10**-8 is refused, never
rounded (it would misstate a position).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from tradeloom.domain.errors import DomainError

MONEY_SCALE = 10**4
QUANTITY_SCALE = 10**8
MAX_UNITS = 2**51


class OutOfRange(DomainError, ValueError):
    """An amount the cache scripts cannot hold exactly (see the module docstring)."""

    code = "risk.out_of_range"


def _checked(units: int, what: str) -> int:
    if abs(units) > MAX_UNITS:
        raise OutOfRange(f"{what} is beyond the {MAX_UNITS} units the risk cache holds exactly")
    return units


def money_units(amount: Decimal, *, round_up: bool) -> int:
    """``amount`` in 10**-4 units, rounded up (``round_up``) or down."""
    rounding = ROUND_CEILING if round_up else ROUND_FLOOR
    units = int((amount * MONEY_SCALE).to_integral_value(rounding=rounding))
    return _checked(units, f"amount {amount}")


def quantity_units(quantity: Decimal) -> int:
    """``quantity`` in 10**-8 units; raises :class:`OutOfRange` if it is finer than that."""
    scaled = quantity * QUANTITY_SCALE
    if scaled != scaled.to_integral_value():
        raise OutOfRange(f"quantity {quantity} is finer than 1e-8")
    return _checked(int(scaled), f"quantity {quantity}")


def clamp_units(units: int) -> int:
    """A limit narrowed into the exact range; narrowing a cap only ever makes it stricter,
    and a value this large cannot be reached by amounts that pass the checks above."""
    return max(-MAX_UNITS, min(MAX_UNITS, units))


def money(units: int) -> Decimal:
    return Decimal(units) / MONEY_SCALE


def quantity(units: int) -> Decimal:
    return Decimal(units) / QUANTITY_SCALE

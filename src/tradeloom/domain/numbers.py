"""Exact numbers for prices, quantities and money.

Every amount in Tradeloom is a :class:`decimal.Decimal` (never a float). ``exact`` is the
single gate through which outside values become amounts: it refuses floats, booleans, NaN
and infinities, so an inexact value can never sneak into a balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TypeAlias

from tradeloom.domain.errors import InvalidNumber

Price: TypeAlias = Decimal
Quantity: TypeAlias = Decimal

ZERO = Decimal(0)


def exact(value: Decimal | int | str, *, field: str = "value") -> Decimal:
    """Return ``value`` as a finite Decimal, or raise :class:`InvalidNumber` naming ``field``."""
    if isinstance(value, (bool, float)):
        raise InvalidNumber(f"{field}: {type(value).__name__} is not an exact number")
    try:
        number = value if isinstance(value, Decimal) else Decimal(value)
    except (InvalidOperation, ValueError, TypeError) as exc:
        raise InvalidNumber(f"{field}: {value!r} is not a decimal number") from exc
    if not number.is_finite():
        raise InvalidNumber(f"{field}: {value!r} is not finite")
    return number


def exact_or_none(value: Decimal | int | str | None, *, field: str = "value") -> Decimal | None:
    """:func:`exact` for an optional amount (a limit price that a market order does not have)."""
    return None if value is None else exact(value, field=field)


def is_multiple_of(value: Decimal, increment: Decimal) -> bool:
    """True when ``value`` lies on the grid of ``increment`` (a tick or lot size)."""
    if increment <= 0:
        raise InvalidNumber(f"increment must be positive, got {increment}")
    return value % increment == 0


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount in one currency. Arithmetic across currencies is refused."""

    amount: Decimal
    currency: str = "USD"

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", exact(self.amount, field="amount"))

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise InvalidNumber(f"cannot combine {self.currency} with {other.currency}")

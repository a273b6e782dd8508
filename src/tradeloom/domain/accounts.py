"""Trading accounts: who owns one, its currency and its opening cash.

An account is the unit risk is checked against and positions are kept for. Its ``owner`` is
the user who may trade it (invariant 9). ``opening_cash`` never changes; ``cash`` is the
balance the read side keeps current from fills.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from tradeloom.domain.errors import DomainError
from tradeloom.domain.numbers import ZERO, exact
from tradeloom.domain.time import require_utc

ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
"""A well-formed account id (use ``fullmatch``)."""
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class InvalidAccount(DomainError, ValueError):
    """Account terms that cannot be kept: a malformed id or currency, negative cash."""

    code = "account.invalid"


class DuplicateAccount(DomainError):
    """An account with this id exists already; ids are never reused."""

    code = "account.duplicate"


@dataclass(frozen=True, slots=True)
class Account:
    """One trading account. Ids are 1-64 characters of letters, digits and ``._:-``."""

    account_id: str
    owner: str
    currency: str
    opening_cash: Decimal
    cash: Decimal
    created_at: datetime

    def __post_init__(self) -> None:
        check_account_id(self.account_id)
        if not self.owner or not self.owner.strip() or len(self.owner) > 64:
            raise InvalidAccount("owner must be a user id of 1-64 characters")
        if not _CURRENCY.match(self.currency):
            raise InvalidAccount(f"currency must be three capital letters, got {self.currency!r}")
        opening = exact(self.opening_cash, field="opening_cash")
        if opening < ZERO:
            raise InvalidAccount(f"opening cash must not be negative, got {opening}")
        object.__setattr__(self, "opening_cash", opening)
        object.__setattr__(self, "cash", exact(self.cash, field="cash"))
        require_utc(self.created_at, field="created_at")


def check_account_id(account_id: str) -> str:
    """Return ``account_id`` if it is well formed, else raise :class:`InvalidAccount`.

    The alphabet leaves out ``|`` and whitespace, so an id can sit inside cache keys and the
    risk engine's delimited records unescaped.
    """
    if not ACCOUNT_ID.fullmatch(account_id):
        raise InvalidAccount(
            f"account id must be 1-64 letters, digits or ._:- characters, got {account_id!r}"
        )
    return account_id

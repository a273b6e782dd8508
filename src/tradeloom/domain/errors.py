"""Domain exceptions. Each carries a machine-readable ``code`` that the web tier maps to HTTP."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    code: str = "domain_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message


class InvalidNumber(DomainError, ValueError):
    """A price, quantity or amount that is not an exact finite decimal."""

    code = "invalid_number"


class InvalidOrder(DomainError):
    """Order terms that do not fit together (a limit order without a price, and so on)."""

    code = "invalid_order"


class IllegalTransition(DomainError):
    """An order was asked to move to a status its current status does not lead to."""

    code = "illegal_transition"


class Overfill(DomainError):
    """A fill would take the filled quantity past the ordered quantity."""

    code = "overfill"


class NaiveTimestamp(DomainError, ValueError):
    """A timestamp without a timezone, or not in UTC, reached the domain.

    A ValueError too, so decoding an event with such a timestamp fails as a validation error.
    """

    code = "naive_timestamp"

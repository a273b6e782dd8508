"""Shared rules for turning wire values into a :class:`~tradeloom.domain.events.PriceUpdate`.

Every feed's normalizer ends in :func:`price_update`, so every feed guarantees the same:
numbers are exact decimals parsed from text (never floats, never NaN or infinities), prices are
positive, volumes are not negative, timestamps are timezone-aware UTC (a timestamp with
another offset is converted; one without a zone is refused), and the symbol is not empty.

A quote carries ``bid``/``ask`` and ``last=None, volume=0``; a trade carries ``last`` and the
traded ``volume``. So candles, which count updates with ``last``, see each print exactly once.
Anything that breaks these rules raises :class:`MalformedMessage`, which feed loops count, log
and skip.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from tradeloom.domain.errors import DomainError, InvalidNumber
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.numbers import ZERO, exact

RAW_LOG_LIMIT = 200


class MalformedMessage(DomainError, ValueError):
    """A wire message that cannot become a PriceUpdate: bad syntax, values or type."""

    code = "malformed_market_data"


def truncated(raw: bytes | str, limit: int = RAW_LOG_LIMIT) -> str:
    """The raw message for a log line: at most ``limit`` bytes, undecodable bytes escaped."""
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    text = data[:limit].decode("utf-8", "backslashreplace")
    return text + "…" if len(data) > limit else text


def decimal_field(value: object, field: str, *, positive: bool = False) -> Decimal:
    """An exact decimal from a wire value that must be text (or an int, or a Decimal)."""
    if not isinstance(value, (str, int, Decimal)) or isinstance(value, bool):
        raise MalformedMessage(f"{field}: expected a decimal string, got {type(value).__name__}")
    try:
        number = exact(value.strip() if isinstance(value, str) else value, field=field)
    except InvalidNumber as exc:
        raise MalformedMessage(str(exc)) from exc
    if positive and number <= 0:
        raise MalformedMessage(f"{field}: {number} is not positive")
    if number < 0:
        raise MalformedMessage(f"{field}: {number} is negative")
    return number


def optional_price(value: object, field: str) -> Decimal | None:
    return None if value is None else decimal_field(value, field, positive=True)


def utc_timestamp(value: object, field: str = "time") -> datetime:
    """An aware UTC datetime from ISO 8601 text (or an aware datetime); naive ones are refused."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise MalformedMessage(f"{field}: {value!r} is not an ISO 8601 timestamp") from exc
    elif isinstance(value, datetime):
        moment = value
    else:
        raise MalformedMessage(f"{field}: expected a timestamp, got {type(value).__name__}")
    if moment.utcoffset() is None:
        raise MalformedMessage(f"{field}: {value!s} has no timezone")
    return moment.astimezone(UTC)


def price_update(
    *,
    symbol: object,
    venue: str,
    exchange_time: datetime,
    bid: Decimal | None = None,
    ask: Decimal | None = None,
    last: Decimal | None = None,
    volume: Decimal = ZERO,
) -> PriceUpdate:
    """The canonical update, after the checks every feed shares."""
    if not isinstance(symbol, str) or not symbol.strip():
        raise MalformedMessage(f"symbol: expected a non-empty string, got {symbol!r}")
    if bid is None and ask is None and last is None:
        raise MalformedMessage(f"{symbol}: neither bid, ask nor last")
    return PriceUpdate(
        symbol=symbol.strip(),
        bid=bid,
        ask=ask,
        last=last,
        volume=volume,
        exchange_time=exchange_time,
        venue=venue,
    )

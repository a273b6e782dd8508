"""What the trading routes (orders, positions, market data, the stream) use, how a request
names the account it trades in, and what they share at the edge: times made UTC, and the
error answers they document.

Built once per app from the platform by :func:`trading_services`; routes receive it through
the :data:`Trading` dependency.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.accounts import ACCOUNT_ID
from tradeloom.domain.market import Instrument
from tradeloom.market_data.candle_store import CandleQueries
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.notifications import UserStreams
from tradeloom.oms.commands import OrderCommands
from tradeloom.oms.queries import OrderQueries
from tradeloom.web.errors import ApiError
from tradeloom.web.sse import StreamHub

# The shape of an account id (as ``domain.accounts`` makes them). A query parameter of any
# other shape is answered without a lookup: it names no account, and text such as a NUL would
# make PostgreSQL fail the query instead.
ACCOUNT_PATTERN = f"^{ACCOUNT_ID.pattern}$"


@dataclass
class TradingServices:
    orders: OrderCommands
    order_queries: OrderQueries
    accounts: AccountRepository
    instruments: Mapping[str, Instrument]
    last_prices: LastPrices
    candles: CandleQueries
    hub: StreamHub
    user_streams: UserStreams
    _default_accounts: dict[str, str] = field(default_factory=dict, repr=False)

    async def account_for(self, owner: str, account_id: str | None) -> str:
        """The account ``owner`` trades in: ``account_id`` if it is theirs (404 otherwise, as
        for an unknown one), else their first account (remembered: accounts are never
        deleted, and a user's first stays first)."""
        if account_id is not None:
            if not ACCOUNT_ID.fullmatch(account_id):
                raise ApiError(404, "account_not_found", f"account {account_id!r} not found")
            account = await self.accounts.get(account_id)
            if account is None or account.owner != owner:
                raise ApiError(404, "account_not_found", f"account {account_id} not found")
            return account.account_id
        known = self._default_accounts.get(owner)
        if known is not None:
            return known
        owned = await self.accounts.list_for_owner(owner)
        if not owned:
            raise ApiError(409, "no_account", f"user {owner} has no trading account yet")
        self._default_accounts[owner] = owned[0].account_id
        return owned[0].account_id

    def instrument(self, symbol: str) -> Instrument:
        found = self.instruments.get(symbol)
        if found is None:
            raise ApiError(422, "unknown_symbol", f"unknown symbol {symbol!r}", {"symbol": symbol})
        return found


async def trading(request: Request) -> TradingServices:
    services = getattr(request.app.state, "trading", None)
    if not isinstance(services, TradingServices):
        raise RuntimeError("the trading API is not installed")
    return services


Trading = Annotated[TradingServices, Depends(trading)]


def utc_time(name: str, moment: datetime | None) -> datetime | None:
    """``moment`` in UTC, for a query bound. A time without a zone is ambiguous and one that
    leaves the calendar once moved to UTC (``0001-01-01T00:00+01:00``) cannot be compared:
    both are 422 ``invalid_time`` naming the parameter."""
    if moment is None:
        return None
    if moment.utcoffset() is None:
        raise ApiError(422, "invalid_time", f"{name} needs a time zone (e.g. Z)", {"field": name})
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(
            422, "invalid_time", f"{name} is out of the supported range", {"field": name}
        ) from None


# The JSON the trading routes answer, for the OpenAPI document only: the routes build it
# directly (see ``web.json``), so nothing is validated twice on the way out.
DecimalText = Annotated[str, WithJsonSchema({"type": "string", "examples": ["187.25"]})]
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


def _iso_only(value: Any) -> Any:
    """Refuse what pydantic would otherwise read as seconds since 1970 (``13``, ``-5e-44``):
    a time parameter is an ISO 8601 date-time, as the API documents."""
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("expected an ISO 8601 date-time such as 2025-03-14T09:30:00Z")
    return value


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]
"""A query time: ISO 8601 only (with a zone, checked by :func:`utc_time`)."""


def documented(model: type[BaseModel], description: str) -> dict[str, Any]:
    """An OpenAPI response entry answering ``model``."""
    return {"model": model, "description": description}


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable and stable", examples=["unknown_symbol"])
    message: str = Field(description="for people")
    details: Any = Field(None, description="null, or structured (validation: one per field)")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorInfo


_ERROR_MEANINGS = {
    400: "malformed JSON, or an argument the service cannot use (`invalid_cursor`)",
    401: "not logged in, or the session or token is no longer valid",
    403: "a cookie request without its CSRF header, or not allowed",
    404: "no such order or account among yours (another user's is not found either)",
    409: "the order is finished or has a cancel or amend pending; or you have no account yet",
    415: "the body is not JSON",
    422: "invalid input: `validation_failed` (fields in `details`) or a domain code "
    "(`unknown_symbol`, `invalid_quantity`, `risk.*`, ...)",
    429: "past your rate limit; see `Retry-After`",
    503: "a backend cannot be reached; retry shortly",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route gives (401, 422, 429 and 503 always)."""
    return {
        status: documented(ErrorResponse, _ERROR_MEANINGS[status])
        for status in sorted({401, 422, 429, 503, *statuses})
    }

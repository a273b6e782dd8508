"""What the trading routes (orders, positions, market data, the stream) use, and how a
request names the account it trades in.

Built once per app from the platform by :func:`trading_services`; routes receive it through
the :data:`Trading` dependency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.market import Instrument
from tradeloom.market_data.candle_store import CandleQueries
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.notifications import UserStreams
from tradeloom.oms.commands import OrderCommands
from tradeloom.oms.queries import OrderQueries
from tradeloom.web.errors import ApiError
from tradeloom.web.sse import StreamHub


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


def trading(request: Request) -> TradingServices:
    services = getattr(request.app.state, "trading", None)
    if not isinstance(services, TradingServices):
        raise RuntimeError("the trading API is not installed")
    return services


Trading = Annotated[TradingServices, Depends(trading)]

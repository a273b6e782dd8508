"""``/api/market``: the instruments, last quotes and candles.

Quotes come from the last-price cache: a symbol whose last price is older than its TTL (5 s)
reads as ``null``, never as a stale price. Candles come from the candle store, oldest first,
the forming bar included (the last one, while its interval has not ended).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import Candle, Interval
from tradeloom.market_data.candle_store import MAX_QUERY_LIMIT
from tradeloom.market_data.observers import decode_fanout
from tradeloom.web.auth import AuthenticatedUser, rate_limit
from tradeloom.web.errors import ApiError
from tradeloom.web.json import json_object
from tradeloom.web.trading import (
    DecimalText,
    IsoDateTime,
    Timestamp,
    Trading,
    documented,
    error_responses,
    utc_time,
)

Reader = Annotated[AuthenticatedUser, Depends(rate_limit("reads"))]
MAX_SYMBOLS = 100


class InstrumentOut(BaseModel):
    symbol: str
    tick_size: DecimalText
    lot_size: DecimalText
    reference_price: DecimalText
    venue: str


class SymbolsOut(BaseModel):
    symbols: list[InstrumentOut]


class QuoteOut(BaseModel):
    symbol: str
    bid: DecimalText | None
    ask: DecimalText | None
    last: DecimalText | None
    volume: DecimalText
    time: Timestamp
    venue: str


class QuotesOut(BaseModel):
    quotes: dict[str, QuoteOut | None]


class CandleOut(BaseModel):
    start: Timestamp
    open: DecimalText
    high: DecimalText
    low: DecimalText
    close: DecimalText
    volume: DecimalText
    trades: int


class CandlesOut(BaseModel):
    symbol: str
    interval: Interval
    candles: list[CandleOut]


def _ok(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    return {200: documented(model, description)}


def quote_json(update: PriceUpdate) -> dict[str, Any]:
    return {
        "symbol": update.symbol,
        "bid": update.bid,
        "ask": update.ask,
        "last": update.last,
        "volume": update.volume,
        "time": update.exchange_time,
        "venue": update.venue,
    }


def quote_from_fanout(message: bytes) -> tuple[str, bytes] | None:
    """The newest update of one price fan-out message, as ``(symbol, quote JSON)``: what the
    SSE hub sends (a quote per symbol, latest wins)."""
    updates = decode_fanout(message)
    if not updates:
        return None
    newest = updates[-1]
    return newest.symbol, msgspec.json.encode(json_object(quote_json(newest)))


def candle_json(candle: Candle) -> dict[str, Any]:
    return {
        "start": candle.start,
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "trades": candle.trades,
    }


def parse_symbols(trading: Trading, symbols: str) -> list[str]:
    """A comma-separated list of known symbols, without repeats, in the order given."""
    names = list(dict.fromkeys(s.strip().upper() for s in symbols.split(",") if s.strip()))
    if not names:
        raise ApiError(422, "invalid_symbols", "name at least one symbol", {"field": "symbols"})
    if len(names) > MAX_SYMBOLS:
        raise ApiError(
            422, "invalid_symbols", f"at most {MAX_SYMBOLS} symbols", {"field": "symbols"}
        )
    for name in names:
        trading.instrument(name)
    return names


def market_router() -> APIRouter:
    router = APIRouter(prefix="/api/market", tags=["market"])

    @router.get(
        "/symbols",
        response_model=None,
        responses=_ok(SymbolsOut, "every instrument") | error_responses(),
    )
    async def symbols(_: Reader, trading: Trading) -> dict[str, Any]:
        """Every tradable instrument with its price and quantity grid."""
        items = [
            {
                "symbol": i.symbol,
                "tick_size": i.tick_size,
                "lot_size": i.lot_size,
                "reference_price": i.reference_price,
                "venue": i.venue,
            }
            for i in sorted(trading.instruments.values(), key=lambda i: i.symbol)
        ]
        return json_object({"symbols": items})

    @router.get(
        "/quotes",
        response_model=None,
        responses=_ok(QuotesOut, "a quote, or null, per symbol asked for") | error_responses(),
    )
    async def quotes(
        _: Reader,
        trading: Trading,
        symbols: Annotated[str, Query(min_length=1, max_length=2000, examples=["AAPL,MSFT"])],
    ) -> dict[str, Any]:
        """The last quote of each symbol; ``null`` when there is none fresher than 5 s."""
        names = parse_symbols(trading, symbols)
        found = await trading.last_prices.last_many(names)
        return json_object(
            {"quotes": {n: None if q is None else quote_json(q) for n, q in found.items()}}
        )

    @router.get(
        "/candles/{symbol}",
        response_model=None,
        responses=_ok(CandlesOut, "bars, oldest first") | error_responses(),
    )
    async def candles(
        _: Reader,
        trading: Trading,
        symbol: Annotated[str, Path(min_length=1, max_length=32)],
        interval: Literal["1m", "5m", "1h"] = "1m",
        start: IsoDateTime | None = None,
        end: IsoDateTime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)] = 500,
    ) -> dict[str, Any]:
        """Bars starting in ``[start, end)``, oldest first (the latest ``limit`` of them).
        ``start`` and ``end`` need a time zone (any offset; ``Z`` for UTC)."""
        instrument = trading.instrument(symbol.upper())
        start, end = utc_time("start", start), utc_time("end", end)
        bars = await trading.candles.candles(
            instrument.symbol, Interval(interval), start, end, limit
        )
        return json_object(
            {
                "symbol": instrument.symbol,
                "interval": interval,
                "candles": [candle_json(bar) for bar in bars],
            }
        )

    return router

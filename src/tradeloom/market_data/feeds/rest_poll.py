"""A REST snapshot of every quote, served on loopback, and a poller that emits what changed.

``GET /v1/quotes`` answers ``{"quotes": [ {"symbol": "AAPL", "bid": "187.21", "ask": "187.23",
"last": "187.22", "volume": "15300", "time": "2026-01-05T14:30:00.1Z", "venue": "SIMX"}, ...]}``
where ``volume`` is the symbol's cumulative traded volume and ``time`` its last change; numbers
are decimal strings. A snapshot loses the individual prints between two polls, so the poller
reports a trade only as "``last`` with the volume traded since the previous poll": an update
carries ``last`` only when the cumulative volume grew. The feed's first successful poll only
sets the baseline (volume traded before it is not reported); a symbol first seen later reports
its whole cumulative volume; a cumulative volume that went down (a new session) resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.exchange import Drop, RawFrame, TickHub
from tradeloom.market_data.feeds.base import Backoff, FeedCounters, reconnecting, skip_malformed
from tradeloom.market_data.normalize import (
    MalformedMessage,
    decimal_field,
    optional_price,
    price_update,
    utc_timestamp,
)
from tradeloom.market_data.simulator import Quote, Trade

QUOTES_PATH = "/v1/quotes"
STARTUP_TIMEOUT = 5.0


class QuoteRecord(msgspec.Struct):
    """One symbol in the snapshot body, as on the wire."""

    symbol: str
    volume: str
    time: str
    bid: str | None = None
    ask: str | None = None
    last: str | None = None
    venue: str | None = None


class Snapshot(msgspec.Struct):
    quotes: list[msgspec.Raw]


@dataclass(frozen=True, slots=True)
class QuoteState:
    """A record after validation; two equal states mean nothing changed."""

    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None
    volume: Decimal
    time: datetime
    venue: str


_snapshot_decoder = msgspec.json.Decoder(Snapshot)
_record_decoder = msgspec.json.Decoder(QuoteRecord)
_encoder = msgspec.json.Encoder()


def split_snapshot(body: bytes) -> list[msgspec.Raw]:
    """The records of a snapshot body, undecoded; MalformedMessage if the body is not one."""
    try:
        return _snapshot_decoder.decode(body).quotes
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"not a quote snapshot: {exc}") from exc


def parse_record(raw: bytes | msgspec.Raw, venue: str) -> QuoteState:
    try:
        record = _record_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"bad quote record: {exc}") from exc
    if not record.symbol.strip():
        raise MalformedMessage("symbol: empty")
    return QuoteState(
        symbol=record.symbol.strip(),
        bid=optional_price(record.bid, "bid"),
        ask=optional_price(record.ask, "ask"),
        last=optional_price(record.last, "last"),
        volume=decimal_field(record.volume, "volume"),
        time=utc_timestamp(record.time, "time"),
        venue=record.venue or venue,
    )


def unseen(symbol: str, venue: str) -> QuoteState:
    """The state before a symbol's first sighting: nothing quoted, nothing traded."""
    return QuoteState(symbol, None, None, None, Decimal(0), datetime.min.replace(tzinfo=UTC), venue)


def change_to_update(current: QuoteState, previous: QuoteState | None) -> PriceUpdate | None:
    """The update a poll reports for one symbol, or None when nothing changed.

    ``previous`` None means "baseline": report the quote, no trade.
    """
    if current == previous:
        return None
    traded = current.volume - previous.volume if previous is not None else Decimal(0)
    is_trade = traded > 0 and current.last is not None
    if current.bid is None and current.ask is None and not is_trade:
        return None
    return price_update(
        symbol=current.symbol,
        venue=current.venue,
        exchange_time=current.time,
        bid=current.bid,
        ask=current.ask,
        last=current.last if is_trade else None,
        volume=traded if is_trade else Decimal(0),
    )


class _Board:
    """The exchange's current quote per symbol, kept from every tick, as wire records."""

    def __init__(self) -> None:
        self.records: dict[str, QuoteRecord] = {}
        self.override: bytes | None = None
        self.outage = False

    def apply(self, tick: Quote | Trade) -> None:
        moment = tick.time.isoformat().replace("+00:00", "Z")
        record = self.records.get(tick.symbol) or QuoteRecord(tick.symbol, "0", moment)
        record.time, record.venue = moment, tick.venue
        if isinstance(tick, Quote):
            record.bid, record.ask = str(tick.bid), str(tick.ask)
        else:
            record.last = str(tick.price)
            record.volume = str(Decimal(record.volume) + tick.size)
        self.records[tick.symbol] = record

    async def quotes(self, request: Request) -> Response:
        """The snapshot; a pending RawFrame is served once instead, a Drop answers 503 once."""
        if self.outage:
            self.outage = False
            return Response(status_code=503)
        body, self.override = self.override, None
        if body is None:
            body = _encoder.encode({"quotes": list(self.records.values())})
        return Response(body, media_type="application/json")


class RestSnapshotServer:
    """Serves ``GET /v1/quotes`` with uvicorn on loopback, fed by the hub."""

    def __init__(self, hub: TickHub, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._hub, self._host, self._port = hub, host, port
        self._board = _Board()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen (port 0: any free port, kept across restarts) and start following the hub."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._port = sock.getsockname()[1]
        app = Starlette(routes=[Route(QUOTES_PATH, self._board.quotes)])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = server = uvicorn.Server(config)
        self._tasks = [
            asyncio.create_task(server.serve(sockets=[sock])),
            asyncio.create_task(self._follow()),
        ]
        deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
        while not server.started:
            if asyncio.get_running_loop().time() > deadline or self._tasks[0].done():
                raise RuntimeError(f"REST snapshot server did not start on {self.url}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop serving and following; an error the server task raised propagates here."""
        if self._server is None:
            return
        serving, following = self._tasks
        self._server.should_exit = True
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await serving

    async def _follow(self) -> None:
        async with self._hub.subscribe() as queue:
            while True:
                item = await queue.get()
                if isinstance(item, RawFrame):
                    self._board.override = item.payload
                elif isinstance(item, Drop):
                    self._board.outage = True
                else:
                    self._board.apply(item)


class RestPollFeed:
    """Polls the snapshot every ``interval`` seconds and yields only what changed.

    An HTTP failure (connection refused, timeout, 5xx) ends the session; the next one starts
    after the backoff delay and counts as a reconnect.
    """

    def __init__(
        self,
        url: str,
        *,
        interval: float = 1.0,
        name: str = "rest_poll",
        venue: str = "SIMX",
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name, self.url, self.venue, self.interval = name, url, venue, interval
        self.counters = FeedCounters()
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._seen: dict[str, QuoteState] = {}
        self._baseline_taken = False

    def updates(self) -> AsyncIterator[PriceUpdate]:
        return reconnecting(
            self.name, self._session, self.counters, self._backoff, retry_on=(httpx.HTTPError,)
        )

    async def _session(self) -> AsyncIterator[PriceUpdate]:
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as client:
            while True:
                response = await client.get(QUOTES_PATH)
                response.raise_for_status()
                self.counters.connected = True
                for update in self._changes(response.content):
                    yield update
                await self._sleep(self.interval)

    def _changes(self, body: bytes) -> list[PriceUpdate]:
        try:
            records = split_snapshot(body)
        except MalformedMessage as exc:
            self.counters.received += 1
            skip_malformed(self.name, self.counters, body, exc)
            return []
        updates: list[PriceUpdate] = []
        for raw in records:
            self.counters.received += 1
            try:
                state = parse_record(raw, self.venue)
                previous = self._seen.get(state.symbol)
                if previous is None and self._baseline_taken:
                    previous = unseen(state.symbol, state.venue)
                update = change_to_update(state, previous)
            except MalformedMessage as exc:
                skip_malformed(self.name, self.counters, bytes(raw), exc)
                continue
            self._seen[state.symbol] = state
            if update is not None:
                updates.append(update)
        self._baseline_taken = True
        return updates

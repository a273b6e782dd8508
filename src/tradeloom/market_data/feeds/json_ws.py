"""Streaming JSON over WebSocket: the exchange schema, its normalizer, server and client.

Wire schema (one WebSocket text frame holds one message or a JSON array of messages; every
number is a decimal *string*, every time ISO 8601 with a zone):

* quote ``{"T":"q","S":"AAPL","bp":"187.21","bs":"300","ap":"187.23","as":"200",
  "t":"2026-01-05T14:30:00.123456Z","x":"SIMX"}``
* trade ``{"T":"t","S":"AAPL","p":"187.22","s":"100","t":"2026-01-05T14:30:00.1Z","x":"SIMX"}``
* heartbeat ``{"T":"h"}`` (ignored)

``x`` (venue) is optional; unknown fields are ignored; an unknown ``T`` is malformed. One bad
message in an array is skipped alone, the rest of the frame is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import msgspec
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, WebSocketException

from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.exchange import Drop, HubItem, TickHub
from tradeloom.market_data.feeds.base import Backoff, FeedCounters, reconnecting, skip_malformed
from tradeloom.market_data.normalize import (
    MalformedMessage,
    decimal_field,
    price_update,
    utc_timestamp,
)
from tradeloom.market_data.simulator import Quote, Trade

MAX_BATCH = 200


class QuoteMessage(msgspec.Struct, tag_field="T", tag="q"):
    S: str
    bp: str
    bs: str
    ap: str
    as_: str = msgspec.field(name="as")
    t: str
    x: str | None = None


class TradeMessage(msgspec.Struct, tag_field="T", tag="t"):
    S: str
    p: str
    s: str
    t: str
    x: str | None = None


class Heartbeat(msgspec.Struct, tag_field="T", tag="h"):
    pass


_encoder = msgspec.json.Encoder()
_frame_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_message_decoder = msgspec.json.Decoder(QuoteMessage | TradeMessage | Heartbeat)


def split_frame(frame: bytes | str) -> list[msgspec.Raw]:
    """The messages of one frame (a single object or an array), still undecoded."""
    data = frame.encode() if isinstance(frame, str) else frame
    try:
        if data.lstrip().startswith(b"["):
            return _frame_decoder.decode(data)
        return [msgspec.Raw(data)]
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from exc


def normalize_message(raw: bytes | msgspec.Raw, venue: str) -> PriceUpdate | None:
    """One JSON message → a PriceUpdate; None for a heartbeat; MalformedMessage otherwise."""
    try:
        message = _message_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"bad message: {exc}") from exc
    if isinstance(message, Heartbeat):
        return None
    moment = utc_timestamp(message.t, "t")
    if isinstance(message, QuoteMessage):
        return price_update(
            symbol=message.S,
            venue=message.x or venue,
            exchange_time=moment,
            bid=decimal_field(message.bp, "bp", positive=True),
            ask=decimal_field(message.ap, "ap", positive=True),
        )
    return price_update(
        symbol=message.S,
        venue=message.x or venue,
        exchange_time=moment,
        last=decimal_field(message.p, "p", positive=True),
        volume=decimal_field(message.s, "s"),
    )


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def encode_tick(tick: Quote | Trade) -> QuoteMessage | TradeMessage:
    if isinstance(tick, Quote):
        return QuoteMessage(
            S=tick.symbol,
            bp=str(tick.bid),
            bs=str(tick.bid_size),
            ap=str(tick.ask),
            as_=str(tick.ask_size),
            t=_timestamp(tick.time),
            x=tick.venue,
        )
    return TradeMessage(
        S=tick.symbol, p=str(tick.price), s=str(tick.size), t=_timestamp(tick.time), x=tick.venue
    )


class JsonWsServer:
    """Serves the hub's ticks on loopback, batching what is queued into one array per frame."""

    def __init__(self, hub: TickHub, host: str = "127.0.0.1", port: int = 0) -> None:
        self._hub, self._host, self._port = hub, host, port
        self._server: Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}"

    async def start(self) -> None:
        self._server = await serve(self._serve, self._host, self._port)

    async def stop(self) -> None:
        """Close every connection; handlers waiting for ticks are cancelled and return."""
        if self._server is not None:
            self._server.close()
            for handler in self._handlers:
                handler.cancel()
            await self._server.wait_closed()

    async def _serve(self, connection: ServerConnection) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        try:
            async with self._hub.subscribe() as queue:
                while True:
                    batch = [await queue.get()]
                    while len(batch) < MAX_BATCH and not queue.empty():
                        batch.append(queue.get_nowait())
                    if not await self._send(connection, batch):
                        return
        except ConnectionClosed:
            pass  # the client left; a new connection gets its own handler
        except asyncio.CancelledError:
            pass  # stop() ends handlers; returning lets websockets finish the close cleanly

    @staticmethod
    async def _send(connection: ServerConnection, batch: list[HubItem]) -> bool:
        """Send a batch in order; False once the batch told the connection to drop."""
        messages: list[QuoteMessage | TradeMessage] = []
        for item in batch:
            if isinstance(item, (Quote, Trade)):
                messages.append(encode_tick(item))
                continue
            if messages:
                await connection.send(_encoder.encode(messages), text=True)
                messages = []
            if isinstance(item, Drop):
                connection.transport.abort()
                return False
            await connection.send(item.payload)
        if messages:
            await connection.send(_encoder.encode(messages), text=True)
        return True


class JsonWsFeed:
    """The client: reads frames, normalizes each message, reconnects with backoff on a drop."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "json_ws",
        venue: str = "SIMX",
        backoff: Backoff | None = None,
    ) -> None:
        self.name, self.url, self.venue = name, url, venue
        self.counters = FeedCounters()
        self._backoff = backoff or Backoff()

    def updates(self) -> AsyncIterator[PriceUpdate]:
        return reconnecting(
            self.name,
            self._session,
            self.counters,
            self._backoff,
            retry_on=(OSError, WebSocketException, TimeoutError),
        )

    async def _session(self) -> AsyncIterator[PriceUpdate]:
        async with connect(self.url, open_timeout=5) as connection:
            self.counters.connected = True
            async for frame in connection:
                for update in self._normalize_frame(frame):
                    yield update

    def _normalize_frame(self, frame: bytes | str) -> list[PriceUpdate]:
        try:
            messages = split_frame(frame)
        except MalformedMessage as exc:
            self.counters.received += 1
            skip_malformed(self.name, self.counters, frame, exc)
            return []
        updates: list[PriceUpdate] = []
        for raw in messages:
            self.counters.received += 1
            try:
                update = normalize_message(raw, self.venue)
            except MalformedMessage as exc:
                skip_malformed(self.name, self.counters, bytes(raw), exc)
                continue
            if update is not None:
                updates.append(update)
        return updates

"""FIX 4.4 market data over TCP (asyncio streams): a loopback server and a reconnecting client.

Session layer, reduced to what a market-data session needs: the client sends Logon (35=A) and
a MarketDataRequest (35=V, snapshot plus updates, all symbols); the server answers Logon, sends
a ``35=W`` snapshot for every symbol it has quoted so far (so a client that reconnects gets the
book back), then streams ``35=X`` incrementals, one per batch of ticks. Sequence numbers are
per connection; resend requests, heartbeats and checksum validation are out of scope for the
simulator. Message layout and normalization: :mod:`tradeloom.market_data.feeds.fix_codec`.

Throughput: simplefix's parser is pure Python, so one session normalizes about 10k ticks/s on
this machine (``bench/market_feeds.py``); the JSON feed does several times more.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import simplefix  # type: ignore[import-untyped]

from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.market_data.exchange import Drop, HubItem, RawFrame, TickHub
from tradeloom.market_data.feeds.base import Backoff, FeedCounters, reconnecting, skip_malformed
from tradeloom.market_data.feeds.fix_codec import (
    add_incremental_entries,
    add_snapshot_entries,
    new_message,
    normalize_fix,
)
from tradeloom.market_data.normalize import MalformedMessage
from tradeloom.market_data.simulator import Quote, Trade

MAX_ENTRIES_BATCH = 50
LOGON_TIMEOUT = 5.0
READ_SIZE = 65536


class FixServer:
    """Serves the hub's ticks as FIX market data on loopback (see the module docstring)."""

    def __init__(
        self,
        hub: TickHub,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        comp_id: str = "SIMX",
        clock: Clock | None = None,
    ) -> None:
        self._hub, self._host, self._port, self._comp_id = hub, host, port, comp_id
        self._clock = clock or SystemClock()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._quotes: dict[str, Quote] = {}
        self._trades: dict[str, Trade] = {}

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        """Stop listening and end every connection (their handlers return, not raise)."""
        if self._server is not None:
            self._server.close()
            for task in self._connections:
                task.cancel()
            await asyncio.gather(*self._connections)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            client = await asyncio.wait_for(_read_logon(reader), LOGON_TIMEOUT)
            seq = itertools.count(1)
            async with self._hub.subscribe() as queue:
                writer.write(self._message("A", client, next(seq)).encode())
                for symbol, quote in self._quotes.items():
                    snapshot = self._message("W", client, next(seq))
                    add_snapshot_entries(snapshot, quote, self._trades.get(symbol))
                    writer.write(snapshot.encode())
                await self._stream(queue, writer, client, seq)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to tell it
        except asyncio.CancelledError:
            pass  # stop() ends connections; returning keeps asyncio's stream callback quiet
        finally:
            writer.close()

    async def _stream(
        self,
        queue: asyncio.Queue[HubItem],
        writer: asyncio.StreamWriter,
        client: str,
        seq: itertools.count[int],
    ) -> None:
        while True:
            item = await queue.get()
            ticks: list[Quote | Trade] = []
            while isinstance(item, (Quote, Trade)):
                ticks.append(item)
                self._remember(item)
                if len(ticks) >= MAX_ENTRIES_BATCH or queue.empty():
                    break
                item = queue.get_nowait()
            if ticks:
                incremental = self._message("X", client, next(seq))
                add_incremental_entries(incremental, ticks)
                writer.write(incremental.encode())
            if isinstance(item, RawFrame):
                writer.write(item.payload)
            elif isinstance(item, Drop):
                writer.transport.abort()
                return
            await writer.drain()

    def _remember(self, tick: Quote | Trade) -> None:
        if isinstance(tick, Quote):
            self._quotes[tick.symbol] = tick
        else:
            self._trades[tick.symbol] = tick

    def _message(self, message_type: str, client: str, seq: int) -> simplefix.FixMessage:
        return new_message(message_type, self._comp_id, client, seq, self._clock.now())


async def _read_logon(reader: asyncio.StreamReader) -> str:
    """Wait for the client's Logon; return its SenderCompID."""
    parser = simplefix.FixParser()
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            raise asyncio.IncompleteReadError(b"", None)
        parser.append_buffer(data)
        message = parser.get_message()
        if message is not None and message.get(35) == b"A":
            sender = message.get(49) or b"UNKNOWN"
            return str(sender.decode("ascii", "replace"))


class FixFeed:
    """The client: logs on, subscribes, parses with ``FixParser``; reconnects with backoff."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str = "fix",
        venue: str = "SIMX",
        comp_id: str = "TRADELOOM",
        target: str = "SIMX",
        backoff: Backoff | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name, self.venue = name, venue
        self._host, self._port, self._comp_id, self._target = host, port, comp_id, target
        self._clock = clock or SystemClock()
        self._backoff = backoff or Backoff()
        self.counters = FeedCounters()

    def updates(self) -> AsyncIterator[PriceUpdate]:
        return reconnecting(
            self.name,
            self._session,
            self.counters,
            self._backoff,
            retry_on=(OSError, TimeoutError),
        )

    async def _session(self) -> AsyncIterator[PriceUpdate]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port), LOGON_TIMEOUT
        )
        try:
            writer.write(self._logon() + self._market_data_request())
            await writer.drain()
            self.counters.connected = True
            parser = simplefix.FixParser()
            while data := await reader.read(READ_SIZE):
                parser.append_buffer(data)
                for update in self._drain(parser):
                    yield update
        finally:
            writer.close()

    def _drain(self, parser: simplefix.FixParser) -> list[PriceUpdate]:
        """Every complete message in the parser's buffer, normalized; bad ones skipped."""
        updates: list[PriceUpdate] = []
        while True:
            try:
                message = parser.get_message()
            except simplefix.errors.ParsingError as exc:
                self.counters.received += 1
                skip_malformed(self.name, self.counters, parser.get_buffer(), exc)
                _resync(parser)
                continue
            if message is None:
                return updates
            self.counters.received += 1
            try:
                updates.extend(normalize_fix(message, self.venue))
            except MalformedMessage as exc:
                skip_malformed(self.name, self.counters, message.encode(raw=True), exc)

    def _logon(self) -> bytes:
        logon = new_message("A", self._comp_id, self._target, 1, self._clock.now())
        logon.append_pair(98, 0)
        logon.append_pair(108, 30)
        return bytes(logon.encode())

    def _market_data_request(self) -> bytes:
        request = new_message("V", self._comp_id, self._target, 2, self._clock.now())
        for tag, value in ((262, "md-1"), (263, 1), (264, 1), (265, 1), (267, 3)):
            request.append_pair(tag, value)
        for entry_type in (0, 1, 2):
            request.append_pair(269, entry_type)
        request.append_pair(146, 1)
        request.append_pair(55, "*")
        return bytes(request.encode())


def _resync(parser: simplefix.FixParser) -> None:
    """Drop bytes up to the next BeginString, so one garbled message costs only itself."""
    buffer: bytes = parser.get_buffer()
    restart = buffer.find(b"8=FIX", 1)
    parser.reset()
    if restart >= 0:
        parser.append_buffer(buffer[restart:])

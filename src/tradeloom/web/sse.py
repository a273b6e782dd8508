"""Server-Sent Events: one process-wide hub, one bounded outbox per connection.

The traps this module exists to avoid (ARCHITECTURE.md): one upstream subscription per client,
a stream loop that sleeps after every message, and a slow client slowing the others.

* **One upstream subscription per channel per process.** :class:`StreamHub` subscribes to a
  symbol's price channel when the first stream of this process wants the symbol, and closes
  it with the last one; the cache adapter itself keeps one upstream connection per process.
  (A user's events come through :mod:`tradeloom.notifications.stream`, which resumes from
  ``Last-Event-ID``; it pushes them into the same :class:`ClientStream`, with no task per stream.)
* **Quotes are conflated on one ticker, its work spread over the tick.** The hub keeps only
  the newest quote of each symbol. Every stream is served once a tick (``quotes_per_second``
  ticks a second): each changed symbol it watches is offered to it, framed once per symbol
  and message. The cost is (streams x changed symbols they watch), whatever the feed's rate.
  The streams are dealt into slots of about ``SLOT_SECONDS`` across the tick and each slot
  is served at its own time, so a tick over 15,000 streams is many small bursts of writes,
  never one burst that a user event or a request would queue behind (and within a slot the
  work is sliced too). A stream holds at most one pending quote per symbol (latest wins),
  so a slow client gets fewer quotes, never a backlog.
* **User events are never dropped.** They queue per stream, bounded; a stream whose queue
  would overflow is closed instead (``overflowed``) so the client reconnects with
  ``Last-Event-ID`` and resumes from the user's replay buffer without a gap.
* **No sleep per message, no timer per stream.** A stream writes everything that is ready as
  one chunk, then waits on one event that the hub sets; the hub's ticker also brings the
  heartbeat to streams silent for ``heartbeat`` seconds.

SSE mapping: a user event goes out as the notifications module frames it (``id:`` the
per-user id, ``event:`` its type); a quote as ``event: quote`` without an id (quotes are not
replayed: the newest one is the snapshot). A ``: heartbeat`` comment goes out after
``heartbeat`` seconds of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog
from starlette.types import Send

from tradeloom.cache.port import Cache, LocalSubscription
from tradeloom.web.wakeup import Wakeup

log = structlog.get_logger("tradeloom.web.sse")

HEARTBEAT = b": heartbeat\n\n"
_SLICE = 25
"""Streams served between yields to the event loop: each wakes one writer, so a slice is about
this many socket writes (about a millisecond here) before requests and user events get the
loop. Every step an order takes in the web process (its request, risk, placement, relay)
waits about one slice per await: at 15,000 streams a slice of 100 made a /healthz round trip
6-9 ms at p50 and 10 made it 2 ms, for the same CPU."""
SLOT_SECONDS = 0.05
"""How far apart the slots of a tick are served: at 1 quote a second, 20 slots, each about
1/20 of the streams. Short enough that a burst of one slot's writes delays little, long
enough that a slot's timer costs nothing next to its work."""
MAX_SLOTS = 20
"""At most this many slots, however slow the tick: a turn's cost grows with the symbols
watched, and more slots would add turns without making any burst smaller."""
Monotonic = Callable[[], float]


def sse_frame(data: bytes, *, event: str | None = None, event_id: int | None = None) -> bytes:
    """One SSE message. ``data`` must be one line (JSON is)."""
    head = b""
    if event_id is not None:
        head += b"id: %d\n" % event_id
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


class ClientStream:
    """The outbox of one SSE connection. Owned by the event loop; the hub offers, the
    response's :meth:`write_to` sends. A stream waits on one event, with no timer of its own:
    the hub's ticker brings quotes and heartbeats."""

    # Slots rather than an instance dict: about 200 bytes less a stream, which 15,000 feel.
    __slots__ = (
        "_heartbeat",
        "_initial",
        "_max_user_events",
        "_now",
        "_quotes",
        "_user",
        "_wake",
        "closed",
        "last_sent",
        "overflowed",
        "owner",
        "quotes_conflated",
        "slot",
        "symbols",
    )

    def __init__(
        self,
        owner: str,
        symbols: Iterable[str],
        *,
        max_user_events: int = 1000,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        self.owner = owner
        # A tuple, a list and a one-waiter Wakeup rather than a frozenset, a deque and an
        # asyncio.Event: together ~2 KB less per stream, which 15,000 streams feel.
        self.symbols = tuple(dict.fromkeys(symbols))
        self._max_user_events = max_user_events
        self._now = monotonic
        self._quotes: dict[str, bytes] = {}
        self._user: list[bytes] = []
        self._initial: list[bytes] = []
        self._heartbeat = False
        self._wake = Wakeup()
        self.last_sent = monotonic()
        self.slot = 0  # the hub's: which part of its tick serves this stream
        self.overflowed = False
        self.closed = False
        self.quotes_conflated = 0

    # --- the hub's side -------------------------------------------------------------------

    def start_with(self, frames: Sequence[bytes]) -> None:
        """Frames to send before anything live (the snapshot)."""
        self._initial.extend(frames)
        self._wake.set()

    def offer_quote(self, symbol: str, frame: bytes) -> None:
        """The newest quote frame of ``symbol``; replaces one not yet sent (latest wins)."""
        if symbol in self._quotes:
            self.quotes_conflated += 1
        self._quotes[symbol] = frame
        self._wake.set()

    def offer_user_frame(self, frame: bytes) -> None:
        """A user event, in order; never dropped: past the bound the stream closes instead."""
        if len(self._user) >= self._max_user_events:
            self.overflowed = True
        else:
            self._user.append(frame)
        self._wake.set()

    def offer_heartbeat(self) -> None:
        """A comment line, so proxies and the browser see the connection alive."""
        self._heartbeat = True
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    # --- the response's side --------------------------------------------------------------

    async def write_to(self, send: Send) -> None:
        """Send what is ready as ASGI body chunks, one chunk per wake-up, until the stream is
        closed or overflows. The loop awaits the stream's wake-up future directly, with no
        async generator between it and the response: each wake-up then costs the collector
        and the loop the fewest objects and calls."""
        wake = self._wake
        while not self.closed and not self.overflowed:
            chunk = self._take_ready()
            if chunk:
                self.last_sent = self._now()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                continue
            wake.clear()
            await wake.wait()

    def _take_ready(self) -> bytes:
        # The stream's own lists are replaced only when they held something: a fresh empty
        # list per take would outlive it and be one more object per waiting stream for every
        # young collection to scan.
        parts: list[bytes] = []
        if self._initial:
            parts, self._initial = self._initial, []
        if self._user:
            parts += self._user
            self._user = []
        if self._quotes:
            parts.extend(self._quotes.values())
            self._quotes.clear()
        if self._heartbeat:
            self._heartbeat = False
            if not parts:
                parts.append(HEARTBEAT)
        return b"".join(parts)


@dataclass
class _Channel:
    """One symbol's upstream subscription and its watchers, by slot."""

    subscription: LocalSubscription | None = None
    by_slot: dict[int, set[ClientStream]] = field(default_factory=dict)  # no empty sets

    def add(self, stream: ClientStream) -> None:
        self.by_slot.setdefault(stream.slot, set()).add(stream)

    def discard(self, stream: ClientStream) -> None:
        watching = self.by_slot.get(stream.slot)
        if watching is not None:
            watching.discard(stream)
            if not watching:
                del self.by_slot[stream.slot]


QuoteEncoder = Callable[[bytes], tuple[str, bytes] | None]
"""Turns one price-channel message into ``(symbol, quote JSON)`` (the newest update in it),
or None when it holds none."""


class StreamHub:
    """Every SSE stream of this process, and the price subscriptions they share."""

    def __init__(
        self,
        cache: Cache,
        *,
        price_channel: Callable[[str], str],
        quote_from_message: QuoteEncoder,
        quotes_per_second: float = 2.0,
        heartbeat: float = 15.0,
        slot_seconds: float = SLOT_SECONDS,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        if quotes_per_second <= 0 or heartbeat <= 0 or slot_seconds <= 0:
            raise ValueError("quotes_per_second, heartbeat and slot_seconds must be positive")
        self._cache = cache
        self._price_channel = price_channel
        self._quote_from_message = quote_from_message
        self._tick = 1.0 / quotes_per_second
        self._slots = min(MAX_SLOTS, max(1, round(self._tick / slot_seconds)))
        self._heartbeat = heartbeat
        self._now = monotonic
        self._symbols: dict[str, _Channel] = {}
        self._by_slot: list[set[ClientStream]] = [set() for _ in range(self._slots)]
        self._latest: dict[str, bytes] = {}  # each watched symbol's newest upstream message
        self._framed: dict[str, tuple[bytes, bytes | None]] = {}  # message -> its quote frame
        # Per slot, the message last offered of each symbol: a symbol whose newest message is
        # another has changed since the slot's last turn.
        self._offered: list[dict[str, bytes]] = [{} for _ in range(self._slots)]
        self._ticker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def streams(self) -> int:
        return sum(len(streams) for streams in self._by_slot)

    @property
    def slots(self) -> int:
        """How many parts each tick's work is spread over."""
        return self._slots

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._offer_changed_quotes(), name="sse-quotes")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker  # its own failures are logged per tick, inside it
            self._ticker = None
        async with self._lock:
            channels, self._symbols = self._symbols, {}
            for streams in self._by_slot:
                for stream in streams:
                    stream.close()
                streams.clear()
            for channel in channels.values():
                if channel.subscription is not None:
                    await channel.subscription.close()

    async def open(self, stream: ClientStream) -> None:
        """Register ``stream``; returns once its symbols are subscribed upstream."""
        async with self._lock:
            # The emptiest slot, so the slots stay even as streams come and go.
            stream.slot = min(range(self._slots), key=lambda slot: len(self._by_slot[slot]))
            self._by_slot[stream.slot].add(stream)
            try:
                for symbol in stream.symbols:
                    await self._join(symbol, stream)
            except BaseException:
                self._forget(stream)
                for symbol in stream.symbols:
                    await self._drop_if_unwatched(symbol)
                raise

    async def close(self, stream: ClientStream) -> None:
        """Unregister ``stream``: it is out of every set before this first awaits (so a
        cancelled caller never leaves it behind); channels it was the last watcher of are
        then unsubscribed under the lock."""
        stream.close()
        abandoned = self._forget(stream)
        if abandoned:
            async with self._lock:
                for symbol in abandoned:
                    await self._drop_if_unwatched(symbol)

    async def _drop_if_unwatched(self, symbol: str) -> None:
        """Forget a symbol no stream watches any more and close its upstream subscription
        (under the lock)."""
        channel = self._symbols.get(symbol)
        if channel is None or channel.by_slot:
            return
        del self._symbols[symbol]
        self._latest.pop(symbol, None)
        self._framed.pop(symbol, None)
        for offered in self._offered:
            offered.pop(symbol, None)
        if channel.subscription is not None:
            await channel.subscription.close()

    def _forget(self, stream: ClientStream) -> list[str]:
        """Remove ``stream`` from the hub's sets; the symbols nobody watches any more."""
        self._by_slot[stream.slot].discard(stream)
        abandoned = []
        for symbol in stream.symbols:
            channel = self._symbols.get(symbol)
            if channel is not None:
                channel.discard(stream)
                if not channel.by_slot:
                    abandoned.append(symbol)
        return abandoned

    def latest_quote(self, symbol: str) -> bytes | None:
        """The newest quote seen of a symbol some stream of this process watches."""
        message = self._latest.get(symbol)
        return None if message is None else self._decoded(message)

    async def _join(self, symbol: str, stream: ClientStream) -> None:
        channel = self._symbols.setdefault(symbol, _Channel())
        channel.add(stream)
        if channel.subscription is None:
            channel.subscription = await self._cache.subscribe(
                self._price_channel(symbol),
                lambda _channel, message: self._on_price_message(symbol, message),
            )

    def _on_price_message(self, symbol: str, message: bytes) -> None:
        """Only keep it: most upstream messages are superseded before the next tick, so
        decoding waits for a turn (once per changed symbol, not once per message). A message
        for a symbol no longer watched (one arriving while its subscription closes) is
        dropped: kept, it would be offered as live to whoever watches the symbol next, however
        old by then."""
        if symbol in self._symbols:
            self._latest[symbol] = message

    def _decoded(self, message: bytes) -> bytes | None:
        try:
            quote = self._quote_from_message(message)
        except Exception:
            log.warning("sse.bad_price_message", raw=message[:200])
            return None
        return None if quote is None else quote[1]

    def _frame(self, symbol: str, message: bytes) -> bytes | None:
        """The quote frame of ``message``, decoded once whichever slot asks first."""
        cached = self._framed.get(symbol)
        if cached is not None and cached[0] is message:
            return cached[1]
        data = self._decoded(message)
        frame = None if data is None else sse_frame(data, event="quote")
        self._framed[symbol] = (message, frame)
        return frame

    def close_streams(self) -> None:
        """End every stream of this process now (their responses finish); for a server that
        is shutting down, so it need not wait for browsers to hang up. Callable from any
        callback on the event loop's thread: it does not await."""
        for streams in self._by_slot:
            for stream in list(streams):
                stream.close()

    async def _offer_changed_quotes(self) -> None:
        """Serve the slots in turn, one every ``tick / slots`` seconds on a fixed schedule: a
        slot's streams get each changed symbol's newest quote, then heartbeats if they were
        silent. A slot is served at most once a tick (a stream gets a symbol at most
        ``quotes_per_second`` times a second, latest wins). An overloaded process serves the
        slots back to back, still yielding every ``_SLICE`` streams, so requests and user
        events wait a slice, never a turn; its streams then get fewer quotes, never late ones."""
        loop = asyncio.get_running_loop()
        period = self._tick / self._slots
        due = loop.time()
        served_at = [-math.inf] * self._slots
        next_heartbeat_check = [self._now()] * self._slots
        slot = self._slots - 1
        while True:
            slot = (slot + 1) % self._slots
            due = max(due + period, served_at[slot] + self._tick)
            await asyncio.sleep(due - loop.time())
            served_at[slot] = loop.time()
            try:
                await self._offer(slot)
                if self._now() >= next_heartbeat_check[slot]:
                    next_heartbeat_check[slot] = self._now() + min(1.0, self._heartbeat)
                    await self._offer_heartbeats(self._by_slot[slot])
            except Exception:  # one bad turn must not end quotes for every stream
                log.exception("sse.quote_tick_failed")

    async def _offer(self, slot: int) -> None:
        """Each symbol whose newest message this slot has not been offered, to the slot's
        streams watching it. A stream gets all its symbols at once, so it writes one chunk a
        turn however many changed (a yield between two of its offers would let its writer
        send each alone); the loop is yielded every ``_SLICE`` streams."""
        offered_before = self._offered[slot]
        frames: dict[str, bytes] = {}
        streams: set[ClientStream] = set()
        for symbol, channel in self._symbols.items():
            watching = channel.by_slot.get(slot)
            message = self._latest.get(symbol)
            if not watching or message is None or offered_before.get(symbol) is message:
                continue
            offered_before[symbol] = message
            frame = self._frame(symbol, message)
            if frame is not None:
                frames[symbol] = frame
                streams |= watching
        for served, stream in enumerate(streams, start=1):
            for symbol in stream.symbols:
                frame = frames.get(symbol)
                if frame is not None:
                    stream.offer_quote(symbol, frame)
            if served % _SLICE == 0:
                await asyncio.sleep(0)

    async def _offer_heartbeats(self, streams: set[ClientStream]) -> None:
        quiet_since = self._now() - self._heartbeat
        for offered, stream in enumerate(list(streams), start=1):
            if stream.last_sent <= quiet_since:
                stream.offer_heartbeat()
            if offered % _SLICE == 0:
                await asyncio.sleep(0)

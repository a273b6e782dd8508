"""One user's live stream, resumable after a reconnect: what the web tier's SSE endpoint reads.

SSE mapping (the endpoint is the web tier's; :func:`sse_frame` writes it):

* a :class:`Notification` -> ``id: <id>``, ``event: <type>``, ``data: <the message JSON>``;
* a :class:`Reset` -> ``id: <current>``, ``event: reset``, ``data: {"current": <current>}``:
  the client reloads its snapshot (orders, positions) and applies the messages that follow.

The browser sends the last ``id:`` it received as ``Last-Event-ID`` when it reconnects; give
it to :meth:`UserStreams.stream_from` (:func:`parse_last_event_id` parses the header). A new stream
(no header) starts with a Reset, so the browser holds an id to resume from even before the
first message.

How no message is lost or sent twice:

1. subscribe to the owner's channel first: live messages from then on are queued;
2. then read the replay buffer after ``Last-Event-ID``;
3. then forward live messages in id order, dropping ids already sent. A message published
   between 1 and 2 arrives both ways; its second copy is dropped.

Live messages may arrive out of id order (three topics, several notifier processes): one after
a gap is held until the missing ids arrive; if they have not after ``gap_timeout`` seconds (a
notifier died between append and publish; a pub/sub reconnect lost some) they are read from
the buffer, or a Reset is sent when the buffer no longer has them. So the stream yields
strictly consecutive ids, and a Reset whenever it cannot.

Backpressure: the cache hands messages over on the event loop and must not be blocked, so
they are queued; when more than ``max_pending`` wait (the client reads too slowly) the stream
ends with ``overflowed`` set. The web tier then closes the response, and the browser's
reconnect resumes from the buffer. A cache error while reading the buffer is raised from the
iteration: the web tier ends the response the same way.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType

import msgspec
import structlog

from tradeloom.cache.port import Cache, LocalSubscription
from tradeloom.notifications.messages import (
    Notification,
    decode_notification,
    encode_notification,
    user_channel,
)
from tradeloom.notifications.replay_buffer import CAPACITY, ReplayBuffer, Reset, Resume
from tradeloom.notifications.wakeup import Wakeup

log = structlog.get_logger("tradeloom.notifications.stream")

StreamItem = Notification | Reset
GAP_TIMEOUT = 0.5  # seconds


def parse_last_event_id(header: str | None) -> int | None:
    """The ``Last-Event-ID`` header as an id; None when absent or not one of ours (the
    stream then starts with a Reset)."""
    text = (header or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


def sse_frame(item: StreamItem) -> str:
    """The Server-Sent Events frame of one stream item."""
    if isinstance(item, Reset):
        data = json.dumps({"current": item.current})
        return f"id: {item.current}\nevent: reset\ndata: {data}\n\n"
    return f"id: {item.id}\nevent: {item.type}\ndata: {encode_notification(item).decode()}\n\n"


class UserStream:
    """An async iterator of one owner's :class:`Notification` and :class:`Reset` items.

    Open it with :meth:`UserStreams.stream_from`; close it (or use ``async with``) when the
    client goes away. It belongs to one event loop.
    """

    def __init__(
        self,
        cache: Cache,
        replay: ReplayBuffer,
        owner: str,
        last_event_id: int | None,
        *,
        gap_timeout: float = GAP_TIMEOUT,
        max_pending: int = CAPACITY,
    ) -> None:
        self.owner = owner
        self._cache = cache
        self._replay = replay
        self._last_event_id = last_event_id
        self._gap_timeout = gap_timeout
        self._max_pending = max_pending
        # Lists rather than deques: an empty deque costs ~760 bytes, and most streams hold
        # nothing most of the time (see wakeup.py for the Event).
        self._inbox: list[bytes] = []
        self._arrived = Wakeup()
        self._ready: list[StreamItem] = []
        self._taken = 0  # items of _ready handed out (read by index: popping the front is O(n))
        self._held: dict[int, Notification] = {}
        self._gap_since: float | None = None  # loop time the current gap was first seen
        self._next = 1
        self._subscription: LocalSubscription | None = None
        self._closed = False
        self.overflowed = False

    async def open(self) -> None:
        """Subscribe, then catch up from the buffer (in this order: see the module docstring)."""
        self._subscription = await self._cache.subscribe(user_channel(self.owner), self._receive)
        try:
            if self._last_event_id is None:
                self._catch_up(Reset(await self._replay.current_id(self.owner)))
            else:
                self._next = self._last_event_id + 1
                self._catch_up(await self._replay.since(self.owner, self._last_event_id))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop receiving; a pending iteration ends. Idempotent."""
        self._closed = True
        self._arrived.set()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.close()

    async def __aenter__(self) -> UserStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> UserStream:
        return self

    async def __anext__(self) -> StreamItem:
        while self._taken >= len(self._ready):
            if self._closed or self.overflowed:
                raise StopAsyncIteration
            self._ready.clear()
            self._taken = 0
            await self._take_arrivals()
        item = self._ready[self._taken]
        self._taken += 1
        return item

    def _receive(self, channel: str, raw: bytes) -> None:
        # Seam: the cache's fan-out calls this on the event loop; it must never block.
        if len(self._inbox) + len(self._held) >= self._max_pending:
            self.overflowed = True
        else:
            self._inbox.append(raw)
        self._arrived.set()

    async def _take_arrivals(self) -> None:
        """Accept what arrived; wait for more, or fill a gap from the buffer when it lasts."""
        if not self._inbox:
            self._arrived.clear()
            if not await self._arrival():
                self._catch_up(await self._replay.since(self.owner, self._next - 1))
                return
        arrived, self._inbox = self._inbox, []
        for raw in arrived:
            try:
                self._accept(decode_notification(raw))
            except msgspec.DecodeError:
                log.warning("notifications.undecodable_message", owner=self.owner)

    async def _arrival(self) -> bool:
        """Wait for a message (or close); False once a held gap has lasted ``gap_timeout``
        since it was first seen (later arrivals do not restart that clock)."""
        loop = asyncio.get_running_loop()
        if not self._held:
            self._gap_since = None
        elif self._gap_since is None:
            self._gap_since = loop.time()
        deadline = None if self._gap_since is None else self._gap_since + self._gap_timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._arrived.wait()
        except TimeoutError:
            self._gap_since = None
            return False
        return True

    def _catch_up(self, found: Resume | Reset) -> None:
        if isinstance(found, Reset):
            self._ready.append(found)
            self._next = found.current + 1
            self._held = {i: m for i, m in self._held.items() if i >= self._next}
        else:
            for message in found.messages:
                self._accept(message)
        self._release()

    def _accept(self, message: Notification) -> None:
        if message.id >= self._next:
            self._held.setdefault(message.id, message)
        self._release()

    def _release(self) -> None:
        while self._next in self._held:
            self._ready.append(self._held.pop(self._next))
            self._next += 1


class UserStreams:
    """Opens users' streams; the web tier holds one per process."""

    def __init__(
        self,
        cache: Cache,
        replay: ReplayBuffer | None = None,
        *,
        gap_timeout: float = GAP_TIMEOUT,
        max_pending: int = CAPACITY,
    ) -> None:
        self._cache = cache
        self._replay = replay or ReplayBuffer(cache)
        self._gap_timeout = gap_timeout
        self._max_pending = max_pending

    async def stream_from(self, owner: str, last_event_id: int | None) -> UserStream:
        """``owner``'s stream, open, resuming after ``last_event_id`` (None: a new stream)."""
        stream = UserStream(
            self._cache,
            self._replay,
            owner,
            last_event_id,
            gap_timeout=self._gap_timeout,
            max_pending=self._max_pending,
        )
        await stream.open()
        return stream

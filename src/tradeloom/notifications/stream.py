"""One user's live stream, resumable after a reconnect: what the web tier's SSE endpoint serves.

SSE mapping (the endpoint is the web tier's; :func:`sse_frame` writes it):

* a :class:`Notification` -> ``id: <id>``, ``event: <type>``, ``data: <the message JSON>``;
* a :class:`Reset` -> ``id: <current>``, ``event: reset``, ``data: {"current": <current>}``:
  the client reloads its snapshot (orders, positions) and applies the messages that follow.

The browser sends the last ``id:`` it received as ``Last-Event-ID`` when it reconnects; give
it to :meth:`UserStreams.stream_from` (:func:`parse_last_event_id` parses the header). A new stream
(no header) starts with a Reset, so the browser holds an id to resume from even before the
first message.

How no message is lost or sent twice:

1. subscribe to the owner's channel first: live messages from then on are kept;
2. then read the replay buffer after ``Last-Event-ID``;
3. then deliver live messages in id order, dropping ids already delivered. A message
   published between 1 and 2 arrives both ways; its second copy is dropped.

Live messages may arrive out of id order (three topics, several notifier processes): one after
a gap is held until the missing ids arrive; if they have not after ``gap_timeout`` seconds (a
notifier died between append and publish; a pub/sub reconnect lost some) they are read from
the buffer, or a Reset is delivered when the buffer no longer has them. The clock starts when
the gap is first seen; later arrivals do not restart it. So the stream delivers strictly
consecutive ids, and a Reset whenever it cannot.

Pushed, not pulled: each item goes to the ``deliver`` callback as soon as it is ready, on the
event loop, from the cache's own callback. No task waits per stream (at 15,000 streams a task
each cost memory and one more loop hop per event): a timer exists only while a gap is held,
and a task only while a gap is read from the buffer. ``deliver`` must not block; an exception
from it ends the stream.

Ending: a stream holding more than ``max_pending`` messages behind a gap ends with
``overflowed`` set, and a cache error while reading the buffer for a gap ends it too; either
way ``on_end`` is called once, the web tier closes the response, and the browser's reconnect
resumes from the buffer. An error while opening is raised from :meth:`UserStreams.stream_from`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
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

log = structlog.get_logger("tradeloom.notifications.stream")

StreamItem = Notification | Reset
Deliver = Callable[[StreamItem], None]
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


def _nothing() -> None:
    return None


class UserStream:
    """One owner's :class:`Notification` and :class:`Reset` items, pushed to ``deliver``.

    Open it with :meth:`UserStreams.stream_from`; close it (or use ``async with``) when the
    client goes away. It belongs to one event loop.
    """

    def __init__(
        self,
        cache: Cache,
        replay: ReplayBuffer,
        owner: str,
        last_event_id: int | None,
        deliver: Deliver,
        *,
        on_end: Callable[[], None] = _nothing,
        gap_timeout: float = GAP_TIMEOUT,
        max_pending: int = CAPACITY,
    ) -> None:
        self.owner = owner
        self._cache = cache
        self._replay = replay
        self._last_event_id = last_event_id
        self._deliver = deliver
        self._on_end = on_end
        self._gap_timeout = gap_timeout
        self._max_pending = max_pending
        self._early: list[bytes] | None = []  # arrivals before the buffer was read; then None
        self._held: dict[int, Notification] = {}
        self._next = 1
        self._gap_timer: asyncio.TimerHandle | None = None
        self._filling: asyncio.Task[None] | None = None
        self._subscription: LocalSubscription | None = None
        self._closed = False
        self.overflowed = False

    async def open(self) -> None:
        """Subscribe, then catch up from the buffer (in this order: see the module docstring),
        then deliver what arrived meanwhile."""
        self._subscription = await self._cache.subscribe(user_channel(self.owner), self._receive)
        try:
            if self._last_event_id is None:
                found: Resume | Reset = Reset(await self._replay.current_id(self.owner))
            else:
                self._next = self._last_event_id + 1
                found = await self._replay.since(self.owner, self._last_event_id)
        except BaseException:
            await self.close()
            raise
        early, self._early = self._early or [], None
        self._catch_up(found)
        for raw in early:
            self._take(raw)

    async def close(self) -> None:
        """Stop delivering; ``on_end`` is not called. Idempotent."""
        self._closed = True
        self._stop_gap_timer()
        filling, self._filling = self._filling, None
        if filling is not None:
            filling.cancel()
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

    # --- arrivals -------------------------------------------------------------------------

    def _receive(self, channel: str, raw: bytes) -> None:
        # Seam: the cache's fan-out calls this on the event loop; it must never block.
        if self._closed:
            return
        if self._early is None:
            self._take(raw)
        elif len(self._early) >= self._max_pending:
            self._overflow()
        else:
            self._early.append(raw)

    def _take(self, raw: bytes) -> None:
        try:
            message = decode_notification(raw)
        except msgspec.DecodeError:
            log.warning("notifications.undecodable_message", owner=self.owner)
            return
        self._accept(message)

    def _catch_up(self, found: Resume | Reset) -> None:
        if self._closed:
            return
        if isinstance(found, Reset):
            self._next = found.current + 1
            self._held = {i: m for i, m in self._held.items() if i >= self._next}
            self._hand(found)
            self._release()
        else:
            for message in found.messages:
                self._accept(message)

    def _accept(self, message: Notification) -> None:
        if self._closed or message.id < self._next:
            return
        if (
            message.id != self._next  # the one that releases the others is never too many
            and message.id not in self._held
            and len(self._held) >= self._max_pending
        ):
            self._overflow()
            return
        self._held[message.id] = message
        self._release()

    def _release(self) -> None:
        while not self._closed and self._next in self._held:
            item = self._held.pop(self._next)
            self._next += 1
            self._hand(item)
        self._watch_gap()

    def _hand(self, item: StreamItem) -> None:
        try:
            self._deliver(item)
        except Exception:
            log.exception("notifications.deliver_failed", owner=self.owner)
            self._end()

    # --- gaps -----------------------------------------------------------------------------

    def _watch_gap(self) -> None:
        """A timer while messages are held behind a missing id (armed when the gap is first
        seen), none otherwise."""
        if self._closed or not self._held:
            self._stop_gap_timer()
        elif self._gap_timer is None and self._filling is None:
            loop = asyncio.get_running_loop()
            self._gap_timer = loop.call_later(self._gap_timeout, self._gap_lasted)

    def _stop_gap_timer(self) -> None:
        timer, self._gap_timer = self._gap_timer, None
        if timer is not None:
            timer.cancel()

    def _gap_lasted(self) -> None:
        self._gap_timer = None
        if not self._closed and self._held and self._filling is None:
            self._filling = asyncio.get_running_loop().create_task(
                self._fill_gap(), name="user-stream-gap"
            )

    async def _fill_gap(self) -> None:
        """Read what the gap lacks from the buffer (a Reset if it is gone from there). An
        answer to a gap that live arrivals closed meanwhile is dropped: a Reset from it would
        move the next id back and deliver ids twice (a gap still open re-arms the timer)."""
        after = self._next - 1
        try:
            found = await self._replay.since(self.owner, after)
        except Exception as exc:
            self._filling = None
            log.warning("notifications.gap_read_failed", owner=self.owner, error=repr(exc))
            self._end()
            return
        self._filling = None
        if self._next - 1 == after:
            self._catch_up(found)
        self._watch_gap()

    # --- ending ---------------------------------------------------------------------------

    def _overflow(self) -> None:
        self.overflowed = True
        log.info("notifications.stream_overflowed", owner=self.owner)
        self._end()

    def _end(self) -> None:
        """End the stream from inside (overflow, error): stop delivering, tell ``on_end``
        once. The subscription is closed by :meth:`close`, which the owner still calls."""
        if self._closed:
            return
        self._closed = True
        self._stop_gap_timer()
        self._on_end()


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

    async def stream_from(
        self,
        owner: str,
        last_event_id: int | None,
        deliver: Deliver,
        *,
        on_end: Callable[[], None] = _nothing,
    ) -> UserStream:
        """``owner``'s stream, open, resuming after ``last_event_id`` (None: a new stream):
        its items go to ``deliver`` from now on, the first ones before this returns."""
        stream = UserStream(
            self._cache,
            self._replay,
            owner,
            last_event_id,
            deliver,
            on_end=on_end,
            gap_timeout=self._gap_timeout,
            max_pending=self._max_pending,
        )
        await stream.open()
        return stream

"""A continuous pull from one JetStream pull consumer: one open request, messages as they come.

nats-py's ``PullSubscription.fetch`` sends a pull request per call and waits for each message
with a task and a timer of its own. Consumed that way, a steady trickle costs a request, a
``404``/``408`` status reply and several tasks per small batch, on the client and on the
server alike (measured: ~345 µs of client CPU and as much of nats-server's per event at 300
events/s over 8 partitions). :class:`ContinuousPull` speaks JetStream's pull protocol directly
(``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``, the request nats-py itself sends) on a
plain NATS subscription with a callback:

* one request for ``batch`` messages, expiring after ``expires`` seconds, is kept open; the
  server sends messages on it as they are stored (the consumer's ``max_ack_pending`` still
  bounds what is out unacknowledged), so an idle partition costs about one request per
  ``expires`` and a busy one one per ``batch`` messages;
* a new request goes out when the open one has brought ``batch`` messages, was ended by the
  server (a ``408`` timeout, a ``409``), or has lived 90 % of its time: never after it expired,
  because a 2.9 server reports an expired request only when something else wakes the consumer
  (a quiet partition's request would lapse unseen, and the next message would wait for the
  client to notice), and a reconnect loses requests without a word. Each request has a reply
  subject of its own, so the late end of a renewed request ends nothing. Messages carry their
  stream subject, not the request's, so every message counts toward the open request: one
  brought by a renewed request only makes the next renewal come early;
* a refused request (``409`` and the like) or a failed publish (a reconnect with a full
  buffer) is logged and asked again after a backoff, up to ``expires``;
* messages are buffered in arrival order, which for one consumer is delivery order.

Closing with ``drain`` loses nothing: it unsubscribes and waits for a round trip, and the
server (2.9 checked) delivers nothing to a request whose reply subject has no subscriber, so
every message the server sent is in the buffer afterwards and none is left delivered to a
vanished inbox (it would come back only after ``ack_wait``, behind later ones). Aborting skips
the round trip: it is how a crash is simulated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

API_PREFIX = "$JS.API"
_STATUS = api.Header.STATUS
_DESCRIPTION = api.Header.DESCRIPTION
_HEARTBEAT = api.StatusCode.CONTROL_MESSAGE.value
_REQUEST_TIMEOUT = api.StatusCode.REQUEST_TIMEOUT.value
_RENEW_AT = 0.9  # of a request's life: renewed before it expires, not after
_FIRST_BACKOFF = 0.1  # after a refused or failed request, before the next; doubles to expires

_log = structlog.get_logger(__name__)


class ContinuousPull:
    """Messages of one pull consumer, pulled by an always-open request. One owner task takes
    them; nats-py runs :meth:`_received` in the subscription's own task on the same loop."""

    def __init__(
        self, nc: Client, stream: str, durable: str, *, batch: int, expires: float
    ) -> None:
        self._nc = nc
        self._durable = durable
        self._next_subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = max(1, batch)
        self._expires = max(0.05, expires)
        self._request = msgspec.json.encode(
            {"batch": self._batch, "expires": int(self._expires * 1e9)}
        )
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._buffer: list[Msg] = []
        self._oldest_at = 0.0  # loop time the oldest buffered message arrived
        self._requests = 0  # requests sent; the last one's reply subject ends with this count
        self._current = ""  # reply subject of the open request
        self._unanswered = 0  # batch of the open request less every message since it was sent
        self._renew_at = 0.0  # loop time at which the open request is renewed
        self._paused_until = 0.0  # after a refusal: no request before then
        self._backoff = _FIRST_BACKOFF
        self._interrupted = False
        self._arrival: asyncio.Future[None] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def open(self) -> None:
        self._inbox = self._nc.new_inbox()
        # One reply subject per request, so a status reply says which request it ends.
        self._subscription = await self._nc.subscribe(f"{self._inbox}.*", cb=self._received)

    async def take(self, limit: int, *, wait: float, linger: float) -> list[Msg]:
        """Up to ``limit`` messages: waits up to ``wait`` for the first, then until ``linger``
        seconds after the oldest arrived for more (at once when ``limit`` are in hand). May
        return none."""
        loop = asyncio.get_running_loop()
        await self._wait_while(loop, wait, lambda: not self._buffer and not self._interrupted)
        if self._buffer and linger > 0:
            lingering = self._oldest_at + linger - loop.time()
            await self._wait_while(
                loop, lingering, lambda: len(self._buffer) < limit and not self._interrupted
            )
        taken = self._buffer[:limit]
        del self._buffer[:limit]
        await self._keep_requested(loop)
        return taken

    def interrupt(self) -> None:
        """Stop asking for more, and make a ``take`` in progress, and every later one, return
        at once with what is buffered (a worker told to stop should not sit out its wait)."""
        self._interrupted = True
        self._wake()

    async def close(self, *, drain: bool) -> list[Msg]:
        """Stop pulling and unsubscribe. With ``drain``, return every message the server sent
        (see the module docstring); the caller handles those too. Idempotent."""
        self._interrupted = True
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            if drain:
                await subscription.drain()  # type: ignore[no-untyped-call]
            else:
                await subscription.unsubscribe()
        left_over, self._buffer = self._buffer, []
        return left_over

    async def _wait_while(
        self, loop: asyncio.AbstractEventLoop, seconds: float, waiting: Callable[[], bool]
    ) -> None:
        """Keep a request open and wait, up to ``seconds``, while ``waiting()`` holds."""
        deadline = loop.time() + seconds
        while True:
            await self._keep_requested(loop)
            now = loop.time()
            if not waiting() or deadline <= now:
                return
            next_request = self._renew_at if self._unanswered > 0 else self._paused_until
            wake = min(deadline, next_request) if next_request > now else deadline
            await self._arrived(loop, wake - now)

    async def _keep_requested(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._interrupted or self._subscription is None:
            return
        now = loop.time()
        if (self._unanswered > 0 and now < self._renew_at) or now < self._paused_until:
            return
        reply = f"{self._inbox}.{self._requests + 1}"
        try:
            await self._nc.publish(self._next_subject, self._request, reply=reply)
        except Exception as exc:  # e.g. reconnecting with a full buffer: ask again later
            _log.warning("bus.pull_request_failed", consumer=self._durable, error=repr(exc))
            self._refused(now)
            return
        self._requests += 1
        self._current = reply
        self._unanswered = self._batch
        self._renew_at = now + self._expires * _RENEW_AT

    async def _received(self, message: Msg) -> None:
        """The subscription's callback: buffer a message, or note that the open request
        ended on a status reply."""
        headers: dict[str, Any] | None = message.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            if not self._buffer:
                self._oldest_at = asyncio.get_running_loop().time()
            self._buffer.append(message)
            self._unanswered -= 1
            self._backoff = _FIRST_BACKOFF
        elif status == _HEARTBEAT or message.subject != self._current:
            return  # an earlier request ending after its renewal: nothing to do
        elif status == _REQUEST_TIMEOUT:
            self._unanswered = 0
        else:  # 409 and the like: the server ended or refused it; asking at once may spin
            description = headers.get(_DESCRIPTION, "") if headers else ""
            _log.warning(
                "bus.pull_refused", consumer=self._durable, status=status, reason=description
            )
            self._refused(asyncio.get_running_loop().time())
        self._wake()

    def _refused(self, now: float) -> None:
        self._unanswered = 0
        self._paused_until = now + self._backoff
        self._backoff = min(self._backoff * 2, self._expires)

    def _wake(self) -> None:
        arrival = self._arrival
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    async def _arrived(self, loop: asyncio.AbstractEventLoop, within: float) -> None:
        """Wait until a message or a status arrives, or ``within`` seconds pass."""
        arrival = self._arrival = loop.create_future()
        timer = loop.call_later(within, _settle, arrival)
        try:
            await arrival
        finally:
            timer.cancel()
            self._arrival = None


def _settle(arrival: asyncio.Future[None]) -> None:
    if not arrival.done():
        arrival.set_result(None)

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
  bounds what is out unacknowledged), so an idle partition costs one request per ``expires``
  and a busy one one per ``batch`` messages;
* a new request goes out when the open one has brought ``batch`` messages, was ended by the
  server (a ``408`` timeout, a ``409``), or has lived 90 % of its time: never after it expired,
  because a 2.9 server reports an expired request only when something else wakes the consumer
  (a quiet partition's request would lapse unseen, and the next message would wait for the
  client to notice), and a reconnect loses requests without a word. Each request has a reply
  subject of its own, so the late end of a renewed request ends nothing. Messages carry their
  stream subject, not the request's, so every message counts toward the open request: one
  brought by a renewed request only makes the next renewal come early;
* messages are buffered in arrival order, which for one consumer is stream order.

Closing drains: no new request goes out, and what the open request still brings is taken
until it ends, so no message is left delivered to a vanished inbox (it would come back only
after ``ack_wait``). Aborting does not: it is how a crash is simulated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

API_PREFIX = "$JS.API"
_STATUS = api.Header.STATUS
_HEARTBEAT = api.StatusCode.CONTROL_MESSAGE.value
_REQUEST_TIMEOUT = api.StatusCode.REQUEST_TIMEOUT.value
_RENEW_AT = 0.9  # of a request's life: renewed before it expires, not after
_REFUSED_PAUSE = 0.1  # after the server refused a request (409 and the like), before the next


class ContinuousPull:
    """Messages of one pull consumer, pulled by an always-open request. One owner task."""

    def __init__(
        self, nc: Client, stream: str, durable: str, *, batch: int, expires: float
    ) -> None:
        self._nc = nc
        self._next_subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = max(1, batch)
        self._expires = max(0.05, expires)
        self._request = msgspec.json.encode(
            {"batch": self._batch, "expires": int(self._expires * 1e9)}
        )
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._buffer: list[Msg] = []
        self._requests = 0  # requests sent; the last one's reply subject ends with this count
        self._current = ""  # reply subject of the open request
        self._owed = 0  # messages the open request may still bring
        self._renew_at = 0.0  # loop time at which the open request is renewed
        self._paused_until = 0.0
        self._closing = False
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
        """Up to ``limit`` messages: waits up to ``wait`` for the first, then up to ``linger``
        for more (handing over at once when ``limit`` are in hand). May return none."""
        loop = asyncio.get_running_loop()
        await self._wait_while(loop, wait, lambda: not self._buffer and not self._interrupted)
        if self._buffer and linger > 0:
            await self._wait_while(
                loop, linger, lambda: len(self._buffer) < limit and not self._interrupted
            )
        taken = self._buffer[:limit]
        del self._buffer[:limit]
        await self._keep_requested(loop)
        return taken

    def interrupt(self) -> None:
        """Make a ``take`` in progress, and every later one, return at once with what is
        buffered (a worker told to stop should not sit out its wait)."""
        self._interrupted = True
        self._wake()

    async def close(self, *, drain: bool, within: float = 5.0) -> list[Msg]:
        """Stop pulling. With ``drain``, wait (at most ``within`` seconds, and no longer than
        the open request can live) until the open request ended, and return what it brought
        meanwhile; the caller handles those too."""
        self._closing = True
        loop = asyncio.get_running_loop()
        if drain and self._owed > 0:
            lives = self._renew_at + (1 - _RENEW_AT) * self._expires + 0.1 - loop.time()
            await self._wait_while(loop, min(within, lives), lambda: self._owed > 0)
        left_over, self._buffer = self._buffer, []
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()
        return left_over

    async def _wait_while(
        self, loop: asyncio.AbstractEventLoop, seconds: float, waiting: Callable[[], bool]
    ) -> None:
        """Keep a request open and wait, up to ``seconds``, while ``waiting()`` holds."""
        deadline = loop.time() + seconds
        while True:
            await self._keep_requested(loop)
            if not waiting() or (left := deadline - loop.time()) <= 0:
                return
            until_renewal = self._renew_at - loop.time()
            await self._arrived(loop, min(left, until_renewal) if until_renewal > 0 else left)

    async def _keep_requested(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._closing or self._subscription is None:
            return
        now = loop.time()
        if (self._owed > 0 and now < self._renew_at) or now < self._paused_until:
            return
        self._requests += 1
        self._current = f"{self._inbox}.{self._requests}"
        self._owed = self._batch
        self._renew_at = now + self._expires * _RENEW_AT
        await self._nc.publish(self._next_subject, self._request, reply=self._current)

    async def _received(self, message: Msg) -> None:
        """The subscription's callback (nats-py's reader task, this loop): buffer a message,
        or note that a request ended on a status reply."""
        headers: dict[str, Any] | None = message.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            self._buffer.append(message)
            self._owed -= 1
        elif status == _HEARTBEAT or message.subject != self._current:
            return  # an earlier request ending after its renewal: nothing to do
        else:  # 408 the request expired; 409 and others: the server ended or refused it
            self._owed = 0
            if status != _REQUEST_TIMEOUT:  # do not ask again at once: it may refuse again
                self._paused_until = asyncio.get_running_loop().time() + _REFUSED_PAUSE
        self._wake()

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

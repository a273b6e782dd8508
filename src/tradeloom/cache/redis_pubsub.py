"""The Redis pub/sub side of :class:`~tradeloom.cache.redis.RedisCache`: one upstream
connection per process, fanned out to any number of local subscribers (see :class:`PubSubHub`).

Everything here belongs to one event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from redis.asyncio.connection import AbstractConnection

from tradeloom.cache.fanout import fan_out
from tradeloom.cache.port import MessageCallback

log = structlog.get_logger(__name__)


class RedisSubscription:
    """A local subscriber; it shares the adapter's single upstream subscription."""

    def __init__(self, hub: PubSubHub, channel: str, callback: MessageCallback) -> None:
        self._hub = hub
        self.channel = channel
        self.callback = callback

    async def close(self) -> None:
        """Stop delivery to this subscriber; once this returns no message reaches it.
        The upstream channel is unsubscribed when its last local subscriber closes."""
        await self._hub.remove(self)


@dataclass(eq=False, slots=True)
class _Channel:
    """One upstream channel: its local subscribers (in subscription order) and whether Redis
    confirmed the SUBSCRIBE on the current connection."""

    subscribers: dict[RedisSubscription, None] = field(default_factory=dict)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class PubSubHub:
    """One pub/sub connection per process, fanned out to any number of local subscribers.

    * ``_lock`` serialises every change of the channel set together with the SUBSCRIBE or
      UNSUBSCRIBE that carries it upstream, so commands reach Redis in the order of the local
      decisions. Redis answers each channel of each command in order, so ``_expected`` (the
      replies owed) tells exactly which SUBSCRIBE a confirmation belongs to.
    * One reader task owns every read on the connection. It confirms subscriptions and hands
      each message to the channel's local callbacks, in the order Redis delivered them, on the
      event loop (a callback must not block).
    * When the connection drops (or stays silent past ``keepalive`` and a PING), the reader
      logs it, waits with exponential backoff, reconnects and re-subscribes every channel;
      ``subscribe`` calls made meanwhile wait for that confirmation. Messages published while
      disconnected are lost: Redis pub/sub is at-most-once.
    """

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        prefix: str,
        subscribe_timeout: float,
        keepalive: float,
        reconnect_delay: float,
        max_reconnect_delay: float,
    ) -> None:
        self._new_connection = connect
        self._prefix = prefix
        self._subscribe_timeout = subscribe_timeout
        self._keepalive = keepalive
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._channels: dict[str, _Channel] = {}
        self._expected: deque[tuple[bytes, str, _Channel | None]] = deque()
        self._lock = asyncio.Lock()
        self._connection: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self.callback_failures = 0

    async def add(self, channel: str, callback: MessageCallback) -> RedisSubscription:
        """Register a subscriber; return once Redis confirmed the channel's subscription, so a
        message published after this returns reaches the callback."""
        upstream = self._prefix + channel
        subscription = RedisSubscription(self, channel, callback)
        async with self._lock:
            if self._reader is None:
                # In a context of its own: the reader serves every subscriber, not the
                # request that happened to subscribe first (its log context).
                self._reader = asyncio.create_task(
                    self._run(), name="cache-pubsub-reader", context=contextvars.Context()
                )
            state = self._channels.get(upstream)
            if state is None:
                state = self._channels[upstream] = _Channel()
                await self._send(b"subscribe", upstream, state)
            state.subscribers[subscription] = None
        try:
            await asyncio.wait_for(state.confirmed.wait(), self._subscribe_timeout)
        except BaseException as exc:
            await self.remove(subscription)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(
                    f"Redis did not confirm SUBSCRIBE {upstream} in {self._subscribe_timeout}s"
                ) from None
            raise
        return subscription

    async def remove(self, subscription: RedisSubscription) -> None:
        upstream = self._prefix + subscription.channel
        async with self._lock:
            state = self._channels.get(upstream)
            if state is None or subscription not in state.subscribers:
                return
            del state.subscribers[subscription]
            if not state.subscribers:
                del self._channels[upstream]
                await self._send(b"unsubscribe", upstream, None)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        async with self._lock:
            await self._drop_connection()
            self._channels.clear()

    async def _send(self, command: bytes, channel: str, state: _Channel | None) -> None:
        """Send (UN)SUBSCRIBE; the caller holds ``_lock``. Without a live connection nothing is
        sent: the reader re-subscribes the whole channel set when it reconnects."""
        connection = self._connection
        if connection is None or not connection.is_connected:
            return
        self._expected.append((command, channel, state))
        try:
            await connection.send_command(command.decode().upper(), channel, check_health=False)
        except Exception as exc:
            # The reader sees the same broken connection, reconnects and re-subscribes.
            log.warning(
                "cache.pubsub_send_failed", channel=channel, error=f"{type(exc).__name__}: {exc}"
            )

    async def _run(self) -> None:
        delay = self._reconnect_delay
        attempt = 0
        while True:
            try:
                connection = await self._connect(attempt)
                delay = self._reconnect_delay
                await self._read(connection)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                async with self._lock:
                    await self._drop_connection()
                log.warning(
                    "cache.pubsub_disconnected",
                    error=f"{type(exc).__name__}: {exc}",
                    attempt=attempt,
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_reconnect_delay)

    async def _connect(self, attempt: int) -> AbstractConnection:
        connection = self._new_connection()
        await connection.connect()  # type: ignore[no-untyped-call]
        async with self._lock:
            self._connection = connection
            self._expected.clear()
            channels = list(self._channels)
            for name in channels:
                self._expected.append((b"subscribe", name, self._channels[name]))
            if channels:
                await connection.send_command("SUBSCRIBE", *channels, check_health=False)
        if attempt:
            log.info("cache.pubsub_reconnected", channels=len(channels), attempts=attempt)
        return connection

    async def _drop_connection(self) -> None:
        """Forget the connection and every confirmation; the caller holds ``_lock``."""
        connection, self._connection = self._connection, None
        self._expected.clear()
        for state in self._channels.values():
            state.confirmed.clear()
        if connection is not None:
            await connection.disconnect(nowait=True)

    async def _read(self, connection: AbstractConnection) -> None:
        pinged = False
        while True:
            reply = await connection.read_response(
                timeout=self._keepalive, disconnect_on_error=False, push_request=True
            )
            if reply is None:  # silent for `keepalive` seconds: is the connection alive?
                if pinged:
                    raise ConnectionError(f"no reply to PING within {self._keepalive}s")
                async with self._lock:
                    await connection.send_command("PING", check_health=False)
                pinged = True
                continue
            pinged = False
            self._on_reply(reply)

    def _on_reply(self, reply: list[bytes | int]) -> None:
        kind = reply[0]
        if kind == b"message":
            upstream = bytes(reply[1]).decode()
            state = self._channels.get(upstream)
            if state is not None:
                channel, payload = upstream[len(self._prefix) :], bytes(reply[2])
                callbacks = [s.callback for s in state.subscribers]
                self.callback_failures += fan_out(channel, payload, callbacks)
        elif kind in (b"subscribe", b"unsubscribe"):
            self._settle(kind, bytes(reply[1]).decode())
        elif kind != b"pong":
            log.warning("cache.pubsub_unexpected_reply", reply=repr(reply)[:200])

    def _settle(self, kind: bytes, channel: str) -> None:
        """Match a (un)subscribe confirmation with the command it answers."""
        owed = self._expected.popleft() if self._expected else None
        if owed is None or owed[:2] != (kind, channel):
            raise ConnectionError(f"pub/sub out of step: got {kind!r} {channel}, owed {owed}")
        state = owed[2]
        if state is not None:
            state.confirmed.set()

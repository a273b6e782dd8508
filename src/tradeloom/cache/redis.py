"""The ``Cache`` port on Redis 7, through ``redis.asyncio``.

Guarantees beyond the port's:

* **Atomicity** comes from Lua: compare-and-set, increment-with-TTL, the rate limiter and every
  ``CacheScript`` run as one script each (EVALSHA, loading the script when Redis lacks it).
* **Time.** The sliding window reads Redis's own clock (``TIME`` inside the script), so every
  process sharing the Redis shares one clock; no client clock is ever compared with another.
* **No silent retries.** Pooled connections do not retry failed commands: retrying INCRBY after
  a lost reply would count twice. A failed call raises; the caller's circuit breaker decides.
* **Namespacing.** ``prefix`` is prepended to every key and channel, so tests isolate
  themselves and deployments can share a Redis. Scripts must touch only the keys they are
  given (``KEYS``), which are prefixed for them.
* **Pub/sub** holds ONE upstream connection per adapter whatever the number of local
  subscribers (see :class:`_PubSubHub`).

Everything here belongs to one event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript

from tradeloom.cache.memory import check_rate_limit, check_ttl, fan_out
from tradeloom.cache.port import CacheScript, MessageCallback, RateDecision

log = structlog.get_logger(__name__)

_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == 'absent' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
"""

_INCREMENT_WITH_TTL = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if created then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return total
"""

# KEYS[1]: a ZSET of admitted hits scored by Redis server time in microseconds.
# ARGV: limit, window in microseconds, a member unique to this hit.
# Returns {allowed 0/1, admitted hits in the window, microseconds until a hit would be admitted}.
_SLIDING_WINDOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, count + 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, count, tonumber(oldest[2]) + window - now}
"""


def _milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


class RedisCache:
    """The ``Cache`` port on Redis.

    ``max_connections`` bounds the command pool; a caller waits up to ``pool_timeout`` seconds
    for a free connection. ``socket_timeout`` bounds every command. ``client_name`` names the
    connections in ``CLIENT LIST`` (the pub/sub one gets ``:pubsub`` appended).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        max_connections: int = 64,
        pool_timeout: float = 5.0,
        socket_timeout: float = 5.0,
        client_name: str = "tradeloom",
        subscribe_timeout: float = 5.0,
        keepalive: float = 15.0,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
    ) -> None:
        self._prefix = prefix
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            client_name=client_name,
        )
        self._redis = Redis(connection_pool=self._pool)
        self._compare_and_set = self._redis.register_script(_COMPARE_AND_SET)
        self._increment_with_ttl = self._redis.register_script(_INCREMENT_WITH_TTL)
        self._sliding_window = self._redis.register_script(_SLIDING_WINDOW)
        self._scripts: dict[str, AsyncScript] = {}
        pubsub_settings = {
            **self._pool.connection_kwargs,
            "protocol": 2,  # plain arrays for every pub/sub reply, whatever the URL asks
            "maint_notifications_config": None,  # a RESP3 feature, and not for this connection
            "maint_notifications_pool_handler": None,
            "client_name": f"{client_name}:pubsub",
        }
        self._hub = _PubSubHub(
            lambda: self._pool.connection_class(**pubsub_settings),
            prefix=prefix,
            subscribe_timeout=subscribe_timeout,
            keepalive=keepalive,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
        )

    @property
    def callback_failures(self) -> int:
        """How many subscriber callbacks raised since start."""
        return self._hub.callback_failures

    async def start(self) -> None:
        """Check Redis answers; connections are opened on demand by the pool."""
        await self.ping()

    async def close(self) -> None:
        """Stop the pub/sub reader, drop every local subscriber, close all connections."""
        await self._hub.close()
        await self._redis.aclose()
        await self._pool.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    async def get(self, key: str) -> bytes | None:
        # The pool never decodes (decode_responses is off): values come back as bytes.
        return cast(bytes | None, await self._redis.get(self._prefix + key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return cast(list[bytes | None], await self._redis.mget([self._prefix + k for k in keys]))

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        check_ttl(ttl)
        px = None if ttl is None else _milliseconds(ttl)
        await self._redis.set(self._prefix + key, value, px=px)

    async def delete(self, key: str) -> bool:
        removed: int = await self._redis.delete(self._prefix + key)
        return removed == 1

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        """Atomic (one Lua script). Without ``ttl`` the new value does not expire."""
        check_ttl(ttl)
        args: list[bytes | str | int] = [
            "absent" if expected is None else "value",
            b"" if expected is None else expected,
            value,
            "" if ttl is None else _milliseconds(ttl),
        ]
        return bool(await self._compare_and_set(keys=[self._prefix + key], args=args))

    async def increment(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """INCRBY; with ``ttl``, a Lua script that sets the expiry only if it created the key."""
        check_ttl(ttl)
        name = self._prefix + key
        if ttl is None:
            total: int = await self._redis.incrby(name, amount)
            return total
        return int(await self._increment_with_ttl(keys=[name], args=[amount, _milliseconds(ttl)]))

    async def run_script(
        self, script: CacheScript, keys: Sequence[str], args: Sequence[str]
    ) -> object:
        """Run the Lua twin over the prefixed ``keys``; atomic as every Lua script is."""
        registered = self._scripts.get(script.name)
        if registered is None:
            registered = self._scripts[script.name] = self._redis.register_script(script.lua)
        elif registered.script != script.lua:
            raise ValueError(f"two different cache scripts are named {script.name!r}")
        result: object = await registered(keys=[self._prefix + k for k in keys], args=list(args))
        return result

    async def hit_rate_limit(self, key: str, limit: int, window: float) -> RateDecision:
        """Sliding window on Redis server time; refused hits are not recorded, and
        ``retry_after`` is when the oldest admitted hit leaves the window."""
        check_rate_limit(limit, window)
        window_us = max(1, round(window * 1_000_000))
        allowed, count, wait_us = await self._sliding_window(
            keys=[self._prefix + key], args=[limit, window_us, uuid.uuid4().hex]
        )
        return RateDecision(
            allowed=bool(allowed), count=int(count), retry_after=int(wait_us) / 1_000_000
        )

    async def publish(self, channel: str, message: bytes) -> None:
        await self._redis.publish(self._prefix + channel, message)

    async def subscribe(self, channel: str, callback: MessageCallback) -> RedisSubscription:
        return await self._hub.add(channel, callback)


class RedisSubscription:
    """A local subscriber; it shares the adapter's single upstream subscription."""

    def __init__(self, hub: _PubSubHub, channel: str, callback: MessageCallback) -> None:
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


class _PubSubHub:
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
                self._reader = asyncio.create_task(self._run(), name="cache-pubsub-reader")
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

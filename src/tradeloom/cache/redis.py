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
  subscribers (see :class:`tradeloom.cache.redis_pubsub.PubSubHub`).
* **Automatic pipelining.** Single commands issued while two sends are in flight go to Redis
  together as one pipeline (:mod:`tradeloom.cache.redis_batching`): each caller still gets
  its own reply or error, nothing waits on purpose, and a lone command is sent at once.
  ``ping``, the batch methods and script loading use the pool directly.
* **Batches.** ``set_many``, ``publish_many`` and ``run_scripts`` send their commands as one
  pipeline (``transaction=False``: no MULTI/EXEC), one round trip on one pooled connection.
  ``run_scripts`` loads (SCRIPT LOAD) at the head of its pipeline every script this adapter has
  not yet run in a batch, so a batch's EVALSHAs find their scripts. Should Redis have lost them
  since (a restart, SCRIPT FLUSH), it does as ``run_script`` does, load and run again, for
  the calls refused with NOSCRIPT, provided nothing after the first refused call ran; else it
  raises :class:`ScriptsOutOfOrder` rather than run an earlier call after a later one.

Everything here belongs to one event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from tradeloom.cache.port import (
    SLIDING_WINDOW_LUA,
    CacheScript,
    MessageCallback,
    RateDecision,
    ScriptCall,
)
from tradeloom.cache.redis_batching import CommandBatcher
from tradeloom.cache.redis_pubsub import PubSubHub, RedisSubscription
from tradeloom.cache.validation import check_rate_limit, check_ttl

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

# KEYS[1]: the window (see SLIDING_WINDOW_LUA). ARGV: limit, window in microseconds, a member
# unique to this hit. Returns {allowed 0/1, admitted hits in the window, microseconds until a hit
# would be admitted}.
_SLIDING_WINDOW = (
    SLIDING_WINDOW_LUA
    + """
local allowed, count, wait = hit_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
return {allowed, count, wait}
"""
)


class ScriptsOutOfOrder(RuntimeError):
    """Redis had lost some of a batch's scripts and not others, so later calls of the batch ran
    while an earlier one could not: the batch's order was not kept. Retry it (the scripts
    must be idempotent, as for any failed batch); its scripts are loaded again first."""


def _milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


class RedisCache:
    """The ``Cache`` port on Redis.

    ``max_connections`` bounds the command pool; a caller waits up to ``pool_timeout`` seconds
    for a free connection. ``socket_timeout`` bounds every send of a command or a pipeline (a
    command queued while every send is in flight first waits for one of them to end).
    ``client_name`` names the connections in ``CLIENT LIST`` (the pub/sub one gets ``:pubsub``
    appended).
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
        self._batcher = CommandBatcher(self._redis)
        self._compare_and_set = self._redis.register_script(_COMPARE_AND_SET)
        self._increment_with_ttl = self._redis.register_script(_INCREMENT_WITH_TTL)
        self._sliding_window = self._redis.register_script(_SLIDING_WINDOW)
        self._scripts: dict[str, AsyncScript] = {}
        self._loaded: set[str] = set()  # SHAs run_scripts has loaded or seen run
        self._loading: dict[str, asyncio.Task[None]] = {}  # SCRIPT LOADs in flight
        pubsub_settings = {
            **self._pool.connection_kwargs,
            "protocol": 2,  # plain arrays for every pub/sub reply, whatever the URL asks
            "maint_notifications_config": None,  # a RESP3 feature, and not for this connection
            "maint_notifications_pool_handler": None,
            "client_name": f"{client_name}:pubsub",
        }
        self._hub = PubSubHub(
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
        await self._batcher.close()
        await self._redis.aclose()
        await self._pool.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    @property
    def batcher(self) -> CommandBatcher:
        """The automatic pipelining of single commands (its counters, for measurements)."""
        return self._batcher

    async def get(self, key: str) -> bytes | None:
        # The pool never decodes (decode_responses is off): values come back as bytes.
        return cast(bytes | None, await self._batcher.execute("GET", self._prefix + key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        names = [self._prefix + k for k in keys]
        return cast(list[bytes | None], await self._batcher.execute("MGET", *names))

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        check_ttl(ttl)
        if ttl is None:
            await self._batcher.execute("SET", self._prefix + key, value)
        else:
            await self._batcher.execute("SET", self._prefix + key, value, "PX", _milliseconds(ttl))

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        """One round trip: MSET without ``ttl`` (atomic, more than the port promises), else a
        pipeline of ``SET key value PX ttl`` (other clients' commands may run in between)."""
        check_ttl(ttl)
        if not items:
            return
        if ttl is None:
            await self._redis.mset({self._prefix + key: value for key, value in items.items()})
            return
        px = _milliseconds(ttl)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self._prefix + key, value, px=px)
            await pipe.execute()

    async def delete(self, key: str) -> bool:
        return await self._batcher.execute("DEL", self._prefix + key) == 1

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
        return bool(await self._evalsha(self._compare_and_set, [self._prefix + key], args))

    async def increment(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """INCRBY; with ``ttl``, a Lua script that sets the expiry only if it created the key."""
        check_ttl(ttl)
        name = self._prefix + key
        if ttl is None:
            return cast(int, await self._batcher.execute("INCRBY", name, amount))
        args = [amount, _milliseconds(ttl)]
        return int(cast(int, await self._evalsha(self._increment_with_ttl, [name], args)))

    async def run_script(
        self, script: CacheScript, keys: Sequence[str], args: Sequence[str]
    ) -> object:
        """Run the Lua twin over the prefixed ``keys``; atomic as every Lua script is."""
        registered = self._registered(script)
        return await self._evalsha(registered, [self._prefix + k for k in keys], args)

    async def _evalsha(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | bytes | int]
    ) -> object:
        """EVALSHA through the batcher; a script Redis lacks (a restart, SCRIPT FLUSH) is
        loaded and run again, as redis-py's own script call does: NOSCRIPT means it did not
        run."""
        try:
            return await self._batcher.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._load(script)
            return await self._batcher.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _load(self, script: AsyncScript) -> None:
        """SCRIPT LOAD, once for every caller that found the script missing at the same time
        (after a Redis restart, a whole batch does); one caller's cancellation does not cancel
        it for the others."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = self._loading[script.sha] = asyncio.create_task(self._load_now(script))
            loading.add_done_callback(functools.partial(self._loaded_one, script.sha))
        await asyncio.shield(loading)

    def _loaded_one(self, sha: str, loading: asyncio.Task[None]) -> None:
        self._loading.pop(sha, None)
        if not loading.cancelled():
            loading.exception()  # seen: every caller may have been cancelled meanwhile

    async def _load_now(self, script: AsyncScript) -> None:
        await self._redis.script_load(script.script)

    async def run_scripts(self, calls: Sequence[ScriptCall]) -> list[object]:
        """One pipeline of EVALSHA in the given order (see the module docstring for loading
        and NOSCRIPT). A script's error is raised once every reply is in, as the first one."""
        if not calls:
            return []
        results = await self._evalsha_pipeline(calls)
        refused = [isinstance(result, NoScriptError) for result in results]
        if any(refused):
            self._loaded.clear()
            first = refused.index(True)
            if not all(refused[first:]):
                raise ScriptsOutOfOrder(
                    f"Redis lacked the script of call {first + 1} of {len(calls)} while a "
                    "later call's script ran"
                )
            results[first:] = await self._evalsha_pipeline(calls[first:])
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _evalsha_pipeline(self, calls: Sequence[ScriptCall]) -> list[object]:
        """The calls' replies in order, their errors as exception values; scripts not known to
        be loaded are loaded first in the same pipeline (a script Redis cannot load raises)."""
        scripts = [self._registered(call.script) for call in calls]
        loading = {script.sha: script for script in scripts if script.sha not in self._loaded}
        async with self._redis.pipeline(transaction=False) as pipe:
            for script in loading.values():
                pipe.script_load(script.script)
            for call, script in zip(calls, scripts, strict=True):
                keys = [self._prefix + key for key in call.keys]
                pipe.evalsha(script.sha, len(keys), *keys, *call.args)
            replies: list[object] = await pipe.execute(raise_on_error=False)
        loads = replies[: len(loading)]
        self._loaded.update(sha for sha, reply in zip(loading, loads, strict=True) if reply == sha)
        failed = next((reply for reply in loads if isinstance(reply, Exception)), None)
        if failed is not None:
            raise failed
        return replies[len(loading) :]

    def _registered(self, script: CacheScript) -> AsyncScript:
        registered = self._scripts.get(script.name)
        if registered is None:
            registered = self._scripts[script.name] = self._redis.register_script(script.lua)
        elif registered.script != script.lua:
            raise ValueError(f"two different cache scripts are named {script.name!r}")
        return registered

    async def hit_rate_limit(self, key: str, limit: int, window: float) -> RateDecision:
        """Sliding window on Redis server time; refused hits are not recorded, and
        ``retry_after`` is when the oldest admitted hit leaves the window."""
        check_rate_limit(limit, window)
        window_us = max(1, round(window * 1_000_000))
        allowed, count, wait_us = cast(
            list[int],
            await self._evalsha(
                self._sliding_window, [self._prefix + key], [limit, window_us, uuid.uuid4().hex]
            ),
        )
        return RateDecision(
            allowed=bool(allowed), count=int(count), retry_after=int(wait_us) / 1_000_000
        )

    async def publish(self, channel: str, message: bytes) -> None:
        await self._batcher.execute("PUBLISH", self._prefix + channel, message)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """One pipeline of PUBLISH, in order: Redis runs a connection's commands in order and
        the hub reads them back from its one pub/sub connection in that order."""
        if not messages:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, message in messages:
                pipe.publish(self._prefix + channel, message)
            await pipe.execute()

    async def subscribe(self, channel: str, callback: MessageCallback) -> RedisSubscription:
        return await self._hub.add(channel, callback)

"""The ``Cache`` port, implemented in memory and on Redis with the same semantics.

Guarantees (``tests/contract/test_cache_contract.py`` proves each on both adapters):

* Values are bytes. A key set with a TTL reads as absent once the TTL has passed.
* ``compare_and_set``, ``increment`` and ``run_script`` are atomic: concurrent callers never
  lose an update. A script touches several keys as one step (Lua on Redis; on the memory
  adapter the Python twin runs without yielding to the event loop).
* ``run_scripts`` runs many scripts in one round trip, in the given order, each atomic as
  ``run_script`` (not atomic together: another client's commands may run between two).
* ``hit_rate_limit`` is a sliding-window counter: a hit is admitted when fewer than ``limit``
  hits were admitted in the last ``window`` seconds; refused hits are not counted.
* ``set_many`` and ``publish_many`` are the batched hot path (one round trip each on Redis):
  not atomic across keys or messages, but a call that returns did all of it and one that
  fails raises. ``publish_many`` keeps the given order, as successive ``publish`` calls would.
* Pub/sub holds ONE upstream subscription per process whatever the number of local
  subscribers; messages are fanned out in-process, in the order received, by calling each local
  subscriber's callback on the event loop. A callback must not block; one that raises is
  logged and counted and the others still get the message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

ScriptValue = bytes | int | str | None


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    count: int  # admitted hits in the window, this one included when allowed
    retry_after: float  # seconds until a hit would be admitted; 0 when allowed


class ScriptStore(Protocol):
    """The view of the cache a Python script twin works on (synchronous, inside the atomic step).

    It mirrors the few Redis commands scripts use, with Redis's conventions: values come
    back as bytes, a missing key as None, counters are integers stored as decimal text.
    ``hit_window`` is the sliding window of ``Cache.hit_rate_limit``; its Lua twin is the
    ``hit_window`` function of :data:`SLIDING_WINDOW_LUA`.
    """

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    def delete(self, key: str) -> None: ...

    def incrby(self, key: str, amount: int) -> int: ...

    def hit_window(self, key: str, limit: int, window: float) -> RateDecision: ...


SLIDING_WINDOW_LUA = """
local function hit_window(key, limit, window, member)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count < limit then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
    return 1, count + 1, 0
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return 0, count, tonumber(oldest[2]) + window - now
end
"""
"""The Lua twin of ``ScriptStore.hit_window``, for a script to begin with.

``hit_window(key, limit, window, member)``: ``key`` is a ZSET of admitted hits scored by Redis
server time in microseconds, ``window`` is in microseconds, ``member`` is unique to this hit.
Returns ``allowed`` (1/0), the admitted hits in the window (this one included when allowed)
and the microseconds until a hit would be admitted (0 when allowed). Refused hits are not
recorded. Redis's own clock (``TIME``) is the one clock every process shares.
"""


@dataclass(frozen=True, slots=True)
class CacheScript:
    """One atomic multi-key operation, written twice: Lua for Redis, Python for memory.

    Both must behave alike for the same ``keys`` and ``args``; the contract suite runs each
    script of the platform against both. Arguments reach Lua as strings (``ARGV``) and the
    Python twin as the same strings. Return values are limited to what Lua can return to
    Redis faithfully: integers, bytes/strings, None, or a flat list of those.
    """

    name: str
    lua: str
    python: Callable[[ScriptStore, Sequence[str], Sequence[str]], object]


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One run of ``script`` over ``keys`` with ``args``, for ``Cache.run_scripts``."""

    script: CacheScript
    keys: Sequence[str]
    args: Sequence[str]


MessageCallback = Callable[[str, bytes], None]


class LocalSubscription(Protocol):
    """A local subscriber's registration; ``close`` removes it (idempotent)."""

    async def close(self) -> None: ...


class Cache(Protocol):
    async def start(self) -> None:
        """Connect. Called once before anything else."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the cache cannot be reached."""

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; with ``ttl`` (seconds) it expires, without it it stays."""

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        """Store every ``key: value`` of ``items``, each as ``set`` would, in one round trip.

        With ``ttl`` every key expires after it; without it every key stays (an earlier expiry
        is dropped, as with ``set``). Not atomic across keys: another client may see some keys
        written and others not yet. All or exception: when this returns every key was
        written; when it raises, any subset may have been, and the caller must not assume
        which. An invalid ``ttl`` raises before anything is written. Empty ``items``: nothing.
        """

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed."""

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        """Set ``key`` to ``value`` only if it currently holds ``expected`` (None: absent)."""

    async def increment(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` atomically and return the new value; a missing key counts as 0.
        ``ttl`` is applied when the increment creates the key."""

    async def run_script(
        self, script: CacheScript, keys: Sequence[str], args: Sequence[str]
    ) -> object:
        """Run ``script`` atomically over ``keys``."""

    async def run_scripts(self, calls: Sequence[ScriptCall]) -> list[object]:
        """Run every call as ``run_script`` would, in the given order, in one round trip;
        returns their results in that order.

        Each script is atomic and they run one after another in the order given, so calls
        that touch the same keys see each other's effects in that order. Not atomic together:
        another client's commands may run between two of them. When it raises (a script
        failed, the cache could not be reached), any of the calls may have run, so callers
        retry with scripts that are idempotent. Empty ``calls``: nothing is sent.
        """

    async def hit_rate_limit(self, key: str, limit: int, window: float) -> RateDecision:
        """Count one hit against a sliding window of ``window`` seconds."""

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every subscriber of ``channel`` in every process."""

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish each ``(channel, message)`` in one round trip, in the order given.

        Equivalent to awaiting ``publish`` for each pair in turn: every subscriber gets its
        channel's messages in the given order, and local subscribers in this process see the
        whole sequence in that order across channels, exactly as with ``publish``. Not atomic:
        when this raises, any prefix of ``messages`` may have been published, at most once
        each (nothing is retried). Empty ``messages``: nothing is sent.
        """

    async def subscribe(self, channel: str, callback: MessageCallback) -> LocalSubscription:
        """Register a local subscriber; returns once the upstream subscription is active."""

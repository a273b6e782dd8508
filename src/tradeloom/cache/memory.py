"""The in-process ``Cache``: the embedded default, and the trustworthy fake of unit tests.

It keeps the semantics of the Redis adapter (the contract suite runs both), with these
guarantees of its own:

* **Atomicity.** Every operation, scripts included, runs to completion without yielding to the
  event loop, so no other coroutine can observe or interleave with it. The cache belongs to one
  event loop and is not thread-safe: call it from the loop's thread only.
* **Time.** TTLs and rate-limit windows read an injected monotonic clock (seconds), so tests
  expire keys by moving the clock instead of sleeping.
* **One keyspace.** Like Redis, a key holds either a value or a rate-limit window; reading a
  window as a value (or the reverse) raises :class:`WrongKind`.
* **Pub/sub.** ``publish`` delivers to the local subscribers before it returns, in publish
  order, on the publisher's task. A message published from inside a callback is queued and
  delivered after the current message reached every subscriber, so each subscriber sees
  messages in publish order.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tradeloom.cache.fanout import fan_out
from tradeloom.cache.port import CacheScript, MessageCallback, RateDecision, ScriptCall
from tradeloom.cache.validation import check_rate_limit, check_ttl

MonotonicClock = Callable[[], float]


class WrongKind(TypeError):
    """A key was used as a value while it holds a rate-limit window, or the reverse."""


@dataclass(slots=True)
class _Entry:
    value: bytes | deque[float]  # a value, or the admitted-hit times of a rate-limit window
    expires_at: float | None


class _Keyspace:
    """Keys with TTLs; also the synchronous ``ScriptStore`` view Python script twins run on.

    Expired keys are dropped lazily on access and eagerly from a heap of deadlines, so keys that
    are never read again (last prices, sessions) do not pile up.
    """

    def __init__(self, clock: MonotonicClock) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._deadlines: list[tuple[float, str]] = []

    def get(self, key: str) -> bytes | None:
        entry = self.live(key)
        if entry is None:
            return None
        if not isinstance(entry.value, bytes):
            raise WrongKind(f"{key!r} holds a rate-limit window, not a value")
        return entry.value

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        check_ttl(ttl)
        self.put(key, bytes(value), None if ttl is None else self._clock() + ttl)

    def delete(self, key: str) -> None:
        self.remove(key)

    def incrby(self, key: str, amount: int) -> int:
        current = self.get(key)
        entry = self._entries.get(key)
        try:
            total = (0 if current is None else int(current)) + amount
        except ValueError:
            raise ValueError(f"{key!r} does not hold an integer: {current!r}") from None
        self.put(key, str(total).encode(), None if entry is None else entry.expires_at)
        return total

    def hit_window(self, key: str, limit: int, window: float) -> RateDecision:
        """A hit at time t counts while now < t + window. Refused hits leave no trace;
        retry_after is when the oldest admitted hit leaves."""
        now = self._clock()
        entry = self.live(key)
        hits: deque[float]
        if entry is None:
            hits = deque()
        elif isinstance(entry.value, deque):
            hits = entry.value
        else:
            raise WrongKind(f"{key!r} holds a value, not a rate-limit window")
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return RateDecision(allowed=False, count=len(hits), retry_after=hits[0] + window - now)
        hits.append(now)
        self.put(key, hits, now + window)
        return RateDecision(allowed=True, count=len(hits), retry_after=0.0)

    def live(self, key: str) -> _Entry | None:
        """The entry at ``key`` unless it expired (then it is dropped)."""
        self.purge()
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        return entry

    def put(self, key: str, value: bytes | deque[float], expires_at: float | None) -> None:
        self._entries[key] = _Entry(value, expires_at)
        if expires_at is not None:
            heapq.heappush(self._deadlines, (expires_at, key))
            self._compact()

    def remove(self, key: str) -> bool:
        return self.live(key) is not None and self._entries.pop(key, None) is not None

    def purge(self) -> None:
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, key = heapq.heappop(self._deadlines)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at == deadline:
                del self._entries[key]

    def _compact(self) -> None:
        """Rebuild the heap when overwritten keys left it mostly stale deadlines."""
        if len(self._deadlines) > 2 * len(self._entries) + 64:
            self._deadlines = [
                (entry.expires_at, key)
                for key, entry in self._entries.items()
                if entry.expires_at is not None
            ]
            heapq.heapify(self._deadlines)


def _as_reply(value: object) -> object:
    """Shape a Python twin's result as Redis would hand back the Lua twin's result.

    Redis returns strings as bytes, ``true`` as 1, ``false`` as nil, and a flat list of those;
    anything else (a float, a nested list) has no faithful Lua counterpart and is refused.
    """
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return 1 if value else None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list | tuple):
        items = [_as_reply(item) for item in value]
        if any(isinstance(item, list) for item in items):
            raise TypeError("a script may return a flat list only")
        return items
    raise TypeError(f"a script cannot return {type(value).__name__}: Lua has no faithful twin")


class MemorySubscription:
    """A local subscriber of a :class:`MemoryCache` channel."""

    def __init__(self, cache: MemoryCache, channel: str, callback: MessageCallback) -> None:
        self._cache = cache
        self.channel = channel
        self.callback = callback

    async def close(self) -> None:
        """Stop delivery to this subscriber; later messages never reach it. Idempotent."""
        self._cache._unsubscribe(self)


class MemoryCache:
    """The ``Cache`` port in one process. ``clock`` returns monotonic seconds (injected for
    tests); ``callback_failures`` counts subscriber callbacks that raised."""

    def __init__(self, clock: MonotonicClock = time.monotonic) -> None:
        self._clock = clock
        self._keys = _Keyspace(clock)
        self._subscribers: dict[str, list[MemorySubscription]] = {}
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._delivering = False
        self.callback_failures = 0

    async def start(self) -> None:
        """Nothing to connect; present for the port."""

    async def close(self) -> None:
        """Drop every local subscriber. Stored keys stay readable."""
        self._subscribers.clear()

    async def ping(self) -> None:
        """Always reachable."""

    async def get(self, key: str) -> bytes | None:
        return self._keys.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._keys.get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._keys.set(key, value, ttl)

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        """Every key as ``set`` would; all arguments are checked before any key is written,
        and the writes happen in one step (no other coroutine runs in between)."""
        check_ttl(ttl)
        values = [(key, bytes(value)) for key, value in items.items()]
        for key, value in values:
            self._keys.set(key, value, ttl)

    async def delete(self, key: str) -> bool:
        return self._keys.remove(key)

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None
    ) -> bool:
        """Atomic: the read and the write happen in one step. Without ``ttl`` the new value
        does not expire (like ``set``)."""
        check_ttl(ttl)
        if self._keys.get(key) != expected:
            return False
        self._keys.set(key, value, ttl)
        return True

    async def increment(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        check_ttl(ttl)
        created = self._keys.live(key) is None
        total = self._keys.incrby(key, amount)
        if created and ttl is not None:
            self._keys.set(key, str(total).encode(), ttl)
        return total

    async def run_script(
        self, script: CacheScript, keys: Sequence[str], args: Sequence[str]
    ) -> object:
        """Run the Python twin; atomic because it never yields to the event loop."""
        return self._run(ScriptCall(script, keys, args))

    async def run_scripts(self, calls: Sequence[ScriptCall]) -> list[object]:
        """Each twin in turn, without yielding in between: the whole batch is one step here
        (more than the port promises). A twin that raises stops the batch; the ones before it
        stay applied."""
        return [self._run(call) for call in calls]

    def _run(self, call: ScriptCall) -> object:
        return _as_reply(call.script.python(self._keys, list(call.keys), list(call.args)))

    async def hit_rate_limit(self, key: str, limit: int, window: float) -> RateDecision:
        """Sliding window over admitted hits (see ``_Keyspace.hit_window``)."""
        check_rate_limit(limit, window)
        return self._keys.hit_window(key, limit, window)

    async def publish(self, channel: str, message: bytes) -> None:
        """Deliver to every local subscriber before returning (see the module docstring for
        messages published from inside a callback)."""
        await self.publish_many([(channel, message)])

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Deliver each message in turn to every local subscriber before returning, exactly as
        successive ``publish`` calls would (inside a callback they are queued, in order)."""
        self._outbox.extend([(channel, bytes(message)) for channel, message in messages])
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._outbox:
                name, payload = self._outbox.popleft()
                subscribers = tuple(self._subscribers.get(name, ()))
                failures = fan_out(name, payload, (sub.callback for sub in subscribers))
                self.callback_failures += failures
        finally:
            self._delivering = False

    async def subscribe(self, channel: str, callback: MessageCallback) -> MemorySubscription:
        subscription = MemorySubscription(self, channel, callback)
        self._subscribers.setdefault(channel, []).append(subscription)
        return subscription

    def _unsubscribe(self, subscription: MemorySubscription) -> None:
        subscribers = self._subscribers.get(subscription.channel, [])
        if subscription in subscribers:
            subscribers.remove(subscription)
        if not subscribers:
            self._subscribers.pop(subscription.channel, None)

"""Per-user request rate limits, counted in the cache so every web process shares them.

Each *kind* of request has its own sliding window per user: ``orders`` (order entry),
``reads`` (queries) and ``login`` (attempts per client address and username, against password
guessing). A hit past the limit is refused and not counted, so a client that backs off for
``Retry-After`` seconds gets through. The FastAPI side is ``rate_limit(kind)`` in
:mod:`tradeloom.web.auth`.

Fail closed: when the cache cannot be reached ``hit`` raises and the request is refused (503),
rather than let an unbounded stream of requests through to the database and the broker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tradeloom.cache.port import Cache, RateDecision


@dataclass(frozen=True, slots=True)
class RateLimit:
    limit: int  # admitted hits per window
    window: float  # seconds

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.window > 0:
            raise ValueError(f"expected limit >= 1 and window > 0, got {self}")


DEFAULT_RATE_LIMITS: Mapping[str, RateLimit] = {
    "orders": RateLimit(20, 1.0),
    "reads": RateLimit(50, 1.0),
    "login": RateLimit(10, 60.0),
}


class RateLimiter:
    def __init__(self, cache: Cache, limits: Mapping[str, RateLimit] | None = None) -> None:
        self._cache = cache
        self._limits = {**DEFAULT_RATE_LIMITS, **(limits or {})}

    def limit(self, kind: str) -> RateLimit:
        """The limit of ``kind``; ``KeyError`` names an unknown kind (a programming error)."""
        try:
            return self._limits[kind]
        except KeyError:
            raise KeyError(f"no rate limit named {kind!r}; known: {sorted(self._limits)}") from None

    async def hit(self, kind: str, subject: str) -> RateDecision:
        """Count one request of ``kind`` by ``subject`` (a username, or address and name)."""
        limit = self.limit(kind)
        return await self._cache.hit_rate_limit(
            f"ratelimit:{kind}:{subject}", limit.limit, limit.window
        )


def retry_after_seconds(decision: RateDecision) -> int:
    """``Retry-After`` is whole seconds; rounding up (and at least 1) means a client that
    waits that long is admitted."""
    return max(1, math.ceil(decision.retry_after))

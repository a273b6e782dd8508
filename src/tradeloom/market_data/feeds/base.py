"""What every feed client shares: the ``Feed`` protocol, counters, backoff and the retry loop.

A feed is an async iterator of normalized updates that runs until the consumer stops iterating
(``aclose`` or cancellation). Inside, a *session* is one connection; when it fails or ends, the
feed waits (exponential backoff, reset after a session that delivered something) and opens a
new one. A malformed message never ends a session: it is counted, logged with its raw bytes
(truncated) and skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.normalize import MalformedMessage, truncated

log = structlog.get_logger("tradeloom.market_data.feeds")


@dataclass
class FeedCounters:
    """Plain counters per feed, read by metrics and tests.

    ``received``: wire messages read; ``updates``: PriceUpdates yielded; ``malformed``: messages
    skipped; ``reconnects``: sessions opened after the first; ``connected``: a session is open.
    """

    received: int = 0
    updates: int = 0
    malformed: int = 0
    reconnects: int = 0
    connected: bool = False


class Feed(Protocol):
    """A source of normalized price updates; ``updates`` may be iterated once per feed."""

    name: str
    counters: FeedCounters

    def updates(self) -> AsyncIterator[PriceUpdate]: ...


@dataclass
class Backoff:
    """Delays between reconnection attempts: ``initial`` doubling up to ``maximum``."""

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    _next: float = 0.0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay


def skip_malformed(feed: str, counters: FeedCounters, raw: bytes | str, error: Exception) -> None:
    """Count and log one message the feed could not use; the caller then carries on."""
    counters.malformed += 1
    log.warning("malformed_market_data", feed=feed, error=str(error), raw=truncated(raw))


Session = Callable[[], AsyncIterator[PriceUpdate]]


async def reconnecting(
    name: str,
    session: Session,
    counters: FeedCounters,
    backoff: Backoff,
    *,
    retry_on: tuple[type[BaseException], ...],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[PriceUpdate]:
    """Run ``session`` again and again, yielding its updates, with backoff between runs.

    Only ``retry_on`` errors (connection failures) are retried; :class:`MalformedMessage` must
    be handled inside the session, and anything else is a bug and propagates.
    """
    first = True
    while True:
        if not first:
            counters.reconnects += 1
        first = False
        delivered = False
        try:
            async for update in session():
                delivered = True
                counters.updates += 1
                yield update
            reason = "closed by peer"
        except retry_on as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            counters.connected = False
        if delivered:
            backoff.reset()
        delay = backoff.next_delay()
        log.info("feed_disconnected", feed=name, reason=reason, retry_in=delay)
        await sleep(delay)


__all__ = ["Backoff", "Feed", "FeedCounters", "MalformedMessage", "reconnecting", "skip_malformed"]

"""In-process fan-out of pub/sub messages to local subscribers, shared by both adapters.

Each adapter keeps its own registry of local subscribers (the Redis one also tracks the
upstream subscription of each channel) and hands every message to :func:`fan_out`, so a
failing subscriber is treated alike whichever adapter delivers.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from tradeloom.cache.port import MessageCallback

log = structlog.get_logger(__name__)


def fan_out(channel: str, message: bytes, callbacks: Iterable[MessageCallback]) -> int:
    """Hand ``message`` to each callback in turn, on the calling task; return how many raised.

    A callback that raises is logged with its traceback and the next one still runs: one bad
    subscriber must never starve the others. The caller adds the count to its
    ``callback_failures``.
    """
    failures = 0
    for callback in callbacks:
        try:
            callback(channel, message)
        except Exception:
            failures += 1
            log.exception("cache.subscriber_failed", channel=channel, callback=repr(callback))
    return failures

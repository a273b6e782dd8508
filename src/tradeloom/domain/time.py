"""Timezone-aware UTC time: the only kind of timestamp the platform keeps.

``Clock`` is injected wherever time is read, so tests control it; ``SystemClock`` is the real one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

from tradeloom.domain.errors import NaiveTimestamp


class Clock(Protocol):
    """Tells the current time, always timezone-aware UTC."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to; for tests and replays."""

    def __init__(self, start: datetime) -> None:
        self._now = require_utc(start)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, moment: datetime) -> None:
        self._now = require_utc(moment)


def require_utc(moment: datetime, *, field: str = "timestamp") -> datetime:
    """Return ``moment`` if it is timezone-aware UTC; raise :class:`NaiveTimestamp` otherwise,
    or ``TypeError`` for something that is not a datetime at all.

    Cheap for the common case (the ``UTC`` singleton, which is also what msgspec decodes a
    ``Z`` or ``+00:00`` timestamp to): it runs on every event constructed or decoded."""
    if moment.__class__ is datetime and moment.tzinfo is UTC:
        return moment
    if not isinstance(moment, datetime):
        raise TypeError(f"{field}: {type(moment).__name__} is not a datetime")
    offset = moment.utcoffset()
    if offset is None:
        raise NaiveTimestamp(f"{field}: {moment.isoformat()} has no timezone")
    if offset != timedelta(0):
        raise NaiveTimestamp(f"{field}: {moment.isoformat()} is not UTC")
    return moment

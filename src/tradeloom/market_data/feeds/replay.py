"""Historical replay of ticks or bars from CSV or Parquet, at recorded pace, scaled, or flat out.

Columns (a header row in CSV; column names in Parquet; extra columns are ignored):

* ticks: ``timestamp,symbol,bid,ask,last,volume[,venue]`` — ``bid``, ``ask`` and ``last`` may
  be empty; a row with ``last`` is a trade of ``volume``, a row without it a quote (its volume
  is ignored and reported as 0).
* bars: ``timestamp,symbol,open,high,low,close,volume[,venue]`` — ``timestamp`` is the bar's
  start. Each bar becomes four trade updates at that timestamp: open, then high and low (low
  first when the bar closed up), then close carrying the whole volume. Fed to candles of the
  bar's interval or coarser, they rebuild the bar exactly (with a trade count of 4).

Which kind a file holds is read from its columns (``open`` present → bars). Timestamps are ISO
8601 text with a zone (``2026-01-05T14:30:00Z``) or, in Parquet, a timestamp type with a time
zone; naive ones are refused (a naive CSV row is malformed; a naive Parquet column rejects the
file), and others are converted to UTC. Numbers are exact: text, integers or Parquet decimals;
a float Parquet column rejects the file. Rows are replayed in file order and keep their
recorded ``exchange_time``; with a ``speed``, the gap between two rows' timestamps is waited
for, divided by ``speed`` (1.0 is the recorded pace); without one, rows go as fast as
possible. ``progress`` tells how many rows there are and how many were read.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.numbers import ZERO
from tradeloom.market_data.feeds.base import FeedCounters, skip_malformed
from tradeloom.market_data.normalize import (
    MalformedMessage,
    decimal_field,
    optional_price,
    price_update,
    utc_timestamp,
)

TICK_COLUMNS = ("timestamp", "symbol", "bid", "ask", "last", "volume")
BAR_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
NUMBER_COLUMNS = {"bid", "ask", "last", "volume", "open", "high", "low", "close"}
PARQUET_BATCH = 8192

Row = dict[str, Any]


class ReplayFileError(ValueError):
    """The file cannot be replayed at all: unreadable, missing columns, inexact or naive types."""


@dataclass
class ReplayProgress:
    """``total`` rows (known once iteration starts) and ``done`` rows read so far."""

    total: int | None = None
    done: int = 0


def normalize_tick_row(row: Row, venue: str) -> list[PriceUpdate]:
    """One tick row → one update (see the module docstring); MalformedMessage if invalid."""
    last = optional_price(_blank_is_none(row.get("last")), "last")
    volume = decimal_field(row.get("volume"), "volume") if last is not None else ZERO
    return [
        price_update(
            symbol=row.get("symbol"),
            venue=_blank_is_none(row.get("venue")) or venue,
            exchange_time=utc_timestamp(row.get("timestamp"), "timestamp"),
            bid=optional_price(_blank_is_none(row.get("bid")), "bid"),
            ask=optional_price(_blank_is_none(row.get("ask")), "ask"),
            last=last,
            volume=volume,
        )
    ]


def normalize_bar_row(row: Row, venue: str) -> list[PriceUpdate]:
    """One bar row → four trade updates that rebuild it; MalformedMessage if invalid."""
    o, h, lo, c = (
        decimal_field(row.get(n), n, positive=True) for n in ("open", "high", "low", "close")
    )
    if not (lo <= min(o, c) and max(o, c) <= h):
        raise MalformedMessage(f"bar prices out of order: O={o} H={h} L={lo} C={c}")
    volume = decimal_field(row.get("volume"), "volume")
    moment = utc_timestamp(row.get("timestamp"), "timestamp")
    path = (o, lo, h, c) if c >= o else (o, h, lo, c)
    return [
        price_update(
            symbol=row.get("symbol"),
            venue=_blank_is_none(row.get("venue")) or venue,
            exchange_time=moment,
            last=price,
            volume=volume if step == 3 else ZERO,
        )
        for step, price in enumerate(path)
    ]


def _blank_is_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


class ReplayFeed:
    """Replays one file (see the module docstring); iteration ends at the end of the file."""

    def __init__(
        self,
        path: Path,
        *,
        speed: float | None = None,
        name: str = "replay",
        venue: str = "REPLAY",
        timer: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None: as fast as possible)")
        self.name, self.path, self.speed, self.venue = name, path, speed, venue
        self.counters = FeedCounters()
        self.progress = ReplayProgress()
        self._timer, self._sleep = timer, sleep

    async def updates(self) -> AsyncIterator[PriceUpdate]:
        source = _open(self.path)
        self.progress.total = source.total
        normalize = normalize_bar_row if source.bars else normalize_tick_row
        pace = _Pace(self.speed, self._timer, self._sleep)
        self.counters.connected = True
        try:
            for row in source.rows:
                self.progress.done += 1
                self.counters.received += 1
                try:
                    updates = normalize(row, self.venue)
                except MalformedMessage as exc:
                    skip_malformed(self.name, self.counters, repr(row), exc)
                    continue
                await pace.wait_for(updates[0].exchange_time)
                for update in updates:
                    self.counters.updates += 1
                    yield update
        finally:
            self.counters.connected = False


class _Pace:
    """Waits so that recorded time elapses ``speed`` times faster than wall time."""

    def __init__(
        self,
        speed: float | None,
        timer: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._speed, self._timer, self._sleep = speed, timer, sleep
        self._origin: tuple[datetime, float] | None = None

    async def wait_for(self, recorded: datetime) -> None:
        if self._speed is None:
            return
        if self._origin is None:
            self._origin = (recorded, self._timer())
            return
        first_recorded, first_wall = self._origin
        due = first_wall + (recorded - first_recorded).total_seconds() / self._speed
        delay = due - self._timer()
        if delay > 0:
            await self._sleep(delay)


@dataclass
class _Source:
    rows: Iterator[Row]
    total: int
    bars: bool


def _open(path: Path) -> _Source:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _open_csv(path)
    if suffix in (".parquet", ".pq"):
        return _open_parquet(path)
    raise ReplayFileError(f"{path}: expected a .csv or .parquet file")


def _kind(path: Path, columns: list[str]) -> bool:
    """True for bars, False for ticks; ReplayFileError when required columns are missing."""
    bars = "open" in columns
    missing = [c for c in (BAR_COLUMNS if bars else TICK_COLUMNS) if c not in columns]
    if missing:
        kind = "bars" if bars else "ticks"
        raise ReplayFileError(f"{path}: {kind} file without column(s) {', '.join(missing)}")
    return bars


def _open_csv(path: Path) -> _Source:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
            total = sum(1 for _ in csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayFileError(f"{path}: {exc}") from exc
    return _Source(_csv_rows(path), total, _kind(path, [c.strip() for c in header]))


def _csv_rows(path: Path) -> Iterator[Row]:
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            yield {key.strip(): value for key, value in row.items() if key is not None}


def _open_parquet(path: Path) -> _Source:
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ReplayFileError(f"{path}: {exc}") from exc
    schema = parquet.schema_arrow
    bars = _kind(path, schema.names)
    for column in schema:
        if column.name in NUMBER_COLUMNS and pa.types.is_floating(column.type):
            raise ReplayFileError(
                f"{path}: column {column.name} is {column.type}; floats are not exact, "
                "store prices and volumes as decimal or text"
            )
        if column.name == "timestamp" and pa.types.is_timestamp(column.type) and not column.type.tz:
            raise ReplayFileError(f"{path}: column timestamp has no time zone")
    rows = (row for batch in parquet.iter_batches(PARQUET_BATCH) for row in batch.to_pylist())
    return _Source(rows, parquet.metadata.num_rows, bars)

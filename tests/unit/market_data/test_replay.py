"""Replay of recorded ticks and bars from CSV and Parquet: content, pacing, progress, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import Candle, CandleAggregator, Interval
from tradeloom.market_data.feeds.replay import ReplayFeed, ReplayFileError

TICKS_CSV = """timestamp,symbol,bid,ask,last,volume,venue
2026-01-05T14:30:00Z,AAPL,187.21,187.23,,,
2026-01-05T14:30:01.5Z,AAPL,,,187.22,100,XNAS
2026-01-05T14:30:02,AAPL,187.20,187.22,,,
2026-01-05T14:30:03Z,AAPL,NaN,187.22,,,
2026-01-05T14:30:04Z,MSFT,415.50,415.52,,,
"""

BARS_CSV = """timestamp,symbol,open,high,low,close,volume
2026-01-05T14:30:00Z,AAPL,187.20,187.90,186.80,187.50,12000
2026-01-05T14:31:00Z,AAPL,187.50,187.60,186.10,186.20,8000
2026-01-05T14:32:00Z,AAPL,187.50,187.00,186.10,186.20,8000
"""


class FakeTime:
    """A monotonic timer that moves only when the replay sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def timer(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


async def collect(source: AsyncIterator[PriceUpdate]) -> list[PriceUpdate]:
    return [update async for update in source]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


async def test_tick_rows_replay_in_order_and_bad_rows_are_counted_and_skipped(
    tmp_path: Path,
) -> None:
    feed = ReplayFeed(write(tmp_path, "ticks.csv", TICKS_CSV))
    updates = await collect(feed.updates())
    assert [(u.symbol, u.bid, u.last, u.volume, u.venue) for u in updates] == [
        ("AAPL", Decimal("187.21"), None, Decimal(0), "REPLAY"),
        ("AAPL", None, Decimal("187.22"), Decimal(100), "XNAS"),
        ("MSFT", Decimal("415.50"), None, Decimal(0), "REPLAY"),
    ]
    assert updates[1].exchange_time == datetime(2026, 1, 5, 14, 30, 1, 500000, tzinfo=UTC)
    assert feed.counters.malformed == 2  # the naive timestamp and the NaN bid
    assert (feed.progress.total, feed.progress.done) == (5, 5)


async def test_bars_replay_as_four_prints_that_rebuild_each_bar(tmp_path: Path) -> None:
    feed = ReplayFeed(write(tmp_path, "bars.csv", BARS_CSV))
    aggregator = CandleAggregator(intervals=[Interval.M1])
    closed: list[Candle] = []
    async for update in feed.updates():
        closed.extend(aggregator.apply(update).closed)
    bars = closed + list(aggregator.open_bars())
    assert [(b.open, b.high, b.low, b.close, b.volume) for b in bars] == [
        tuple(Decimal(v) for v in ("187.20", "187.90", "186.80", "187.50", "12000")),
        tuple(Decimal(v) for v in ("187.50", "187.60", "186.10", "186.20", "8000")),
    ]
    assert feed.counters.malformed == 1  # high below open


async def test_recorded_pace_is_scaled_by_speed(tmp_path: Path) -> None:
    clock = FakeTime()
    feed = ReplayFeed(
        write(tmp_path, "ticks.csv", TICKS_CSV), speed=2.0, timer=clock.timer, sleep=clock.sleep
    )
    await collect(feed.updates())
    assert clock.sleeps == [0.75, 1.25]  # 1.5 s then 2.5 s more of recorded time, halved


async def test_as_fast_as_possible_never_sleeps(tmp_path: Path) -> None:
    clock = FakeTime()
    feed = ReplayFeed(write(tmp_path, "ticks.csv", TICKS_CSV), timer=clock.timer, sleep=clock.sleep)
    await collect(feed.updates())
    assert clock.sleeps == []


def parquet_ticks(tmp_path: Path, price_type: pa.DataType, time_type: pa.DataType) -> Path:
    schema = pa.schema(
        [("timestamp", time_type), ("symbol", pa.string()), ("bid", price_type),
         ("ask", price_type), ("last", price_type), ("volume", price_type)]
    )  # fmt: skip
    moment = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    rows = [
        {"timestamp": moment, "symbol": "KO", "bid": Decimal("60.20"), "ask": Decimal("60.22"),
         "last": None, "volume": None},
        {"timestamp": moment, "symbol": "KO", "bid": None, "ask": None,
         "last": Decimal("60.21"), "volume": Decimal(300)},
    ]  # fmt: skip
    if pa.types.is_floating(price_type):
        rows = [{k: float(v) if isinstance(v, Decimal) else v for k, v in r.items()} for r in rows]
    path = tmp_path / "ticks.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


async def test_parquet_ticks_with_decimals_and_zoned_timestamps_replay_exactly(
    tmp_path: Path,
) -> None:
    path = parquet_ticks(tmp_path, pa.decimal128(12, 2), pa.timestamp("us", tz="UTC"))
    feed = ReplayFeed(path)
    quote, trade = await collect(feed.updates())
    assert (quote.bid, trade.last, trade.volume) == (
        Decimal("60.20"), Decimal("60.21"), Decimal("300.00")
    )  # fmt: skip
    assert trade.exchange_time == datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    assert feed.progress.total == 2


@pytest.mark.parametrize(
    ("price_type", "time_type", "reason"),
    [
        (pa.float64(), pa.timestamp("us", tz="UTC"), "floats are not exact"),
        (pa.decimal128(12, 2), pa.timestamp("us"), "timestamp has no time zone"),
    ],
)
async def test_inexact_or_naive_parquet_columns_reject_the_file(
    tmp_path: Path, price_type: pa.DataType, time_type: pa.DataType, reason: str
) -> None:
    with pytest.raises(ReplayFileError, match=reason):
        await collect(ReplayFeed(parquet_ticks(tmp_path, price_type, time_type)).updates())


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("ticks.csv", "timestamp,symbol,bid\n", "without column"),
        ("ticks.json", "{}", "expected a .csv or .parquet"),
        ("ticks.parquet", "not parquet", "ticks.parquet"),
    ],
)
async def test_unusable_files_are_refused_with_a_reason(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    with pytest.raises(ReplayFileError, match=reason):
        await collect(ReplayFeed(write(tmp_path, name, text)).updates())

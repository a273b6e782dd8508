"""Feed updates through the bus into the last-price cache, candles and per-symbol fan-out,
on the in-process adapters and SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.helpers import eventually, eventually_equals
from tradeloom.cache.memory import MemoryCache
from tradeloom.domain.events import CandleClosed, PriceUpdate, decode_event
from tradeloom.domain.market import Interval
from tradeloom.domain.time import ManualClock, SystemClock
from tradeloom.market_data.consumer import PriceTick
from tradeloom.market_data.observers import decode_fanout, price_channel
from tradeloom.market_data.service import MarketData
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.observability.metrics import Metrics
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import outbox

MINUTE = datetime(2026, 11, 25, 14, 30, tzinfo=UTC)


def trade(symbol: str, price: str, volume: str, at: datetime) -> PriceUpdate:
    return PriceUpdate(
        symbol=symbol,
        bid=None,
        ask=None,
        last=Decimal(price),
        volume=Decimal(volume),
        exchange_time=at,
        venue="TEST",
    )


def quote(symbol: str, bid: str, at: datetime) -> PriceUpdate:
    return PriceUpdate(
        symbol=symbol,
        bid=Decimal(bid),
        ask=Decimal(bid) + Decimal("0.02"),
        last=None,
        volume=Decimal(0),
        exchange_time=at,
        venue="TEST",
    )


@dataclass
class Exploding:
    """An observer that always fails, to prove the others are not held back by it."""

    name: str = "exploding"
    calls: int = 0

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")


@dataclass
class Monotonic:
    """The memory cache's clock, moved by hand to expire keys."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Pipeline:
    market: MarketData
    cache: MemoryCache
    database: Database
    metrics: Metrics
    monotonic: Monotonic
    exploding: Exploding
    received: list[tuple[str, bytes]] = field(default_factory=list)

    async def publish(self, *updates: PriceUpdate) -> None:
        before = self.market.publisher.published
        for update in updates:
            await self.market.publisher.submit(update)
        await eventually(lambda: self.market.publisher.published == before + len(updates))

    async def bid(self, symbol: str) -> Decimal | None:
        price = await self.market.last_prices.last(symbol)
        return None if price is None else price.bid

    async def candle_volumes(self, symbol: str, interval: Interval) -> list[Decimal]:
        return [c.volume for c in await self.market.candles.candles(symbol, interval)]


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    database = Database(f"sqlite:///{tmp_path}/md.db")
    await upgrade(database)
    monotonic = Monotonic()
    cache = MemoryCache(clock=monotonic)
    bus = MemoryBus(MemoryBroker())
    await bus.start()
    metrics, exploding = Metrics(), Exploding()
    market = MarketData(
        bus=bus,
        cache=cache,
        database=database,
        outbox=Outbox(),
        metrics=metrics,
        clock=ManualClock(MINUTE),  # the prices below are fresh at this time
        close_idle_bars=False,
        extra_observers=[exploding],
    )
    await market.start()
    piped = Pipeline(market, cache, database, metrics, monotonic, exploding)
    for symbol in ("AAPL", "MSFT"):
        await cache.subscribe(
            price_channel(symbol), lambda ch, msg: piped.received.append((ch, msg))
        )
    yield piped
    await market.stop()
    await bus.close()
    await database.dispose()


async def test_an_update_reaches_the_last_price_cache(pipeline: Pipeline) -> None:
    await pipeline.publish(quote("AAPL", "187.20", MINUTE))
    await eventually_equals(lambda: pipeline.bid("AAPL"), Decimal("187.20"))


async def test_an_older_update_never_overwrites_a_newer_last_price(pipeline: Pipeline) -> None:
    await pipeline.publish(quote("AAPL", "187.30", MINUTE + timedelta(seconds=2)))
    await eventually_equals(lambda: pipeline.bid("AAPL"), Decimal("187.30"))
    await pipeline.publish(quote("AAPL", "187.10", MINUTE), quote("MSFT", "410.00", MINUTE))
    await eventually_equals(lambda: pipeline.bid("MSFT"), Decimal("410.00"))
    assert await pipeline.bid("AAPL") == Decimal("187.30")


async def test_a_price_older_than_the_ttl_reads_as_no_price(pipeline: Pipeline) -> None:
    await pipeline.publish(quote("AAPL", "187.20", MINUTE))
    await eventually_equals(lambda: pipeline.bid("AAPL"), Decimal("187.20"))
    pipeline.monotonic.now += 4.9
    assert await pipeline.bid("AAPL") == Decimal("187.20")
    pipeline.monotonic.now += 0.2
    assert await pipeline.market.last_prices.last("AAPL") is None


async def test_an_update_older_than_the_ttl_is_never_served(pipeline: Pipeline) -> None:
    await pipeline.publish(
        quote("MSFT", "410.00", MINUTE - timedelta(seconds=6)),  # stale on arrival
        quote("AAPL", "187.20", MINUTE),
    )
    await eventually_equals(lambda: pipeline.bid("AAPL"), Decimal("187.20"))
    assert await pipeline.market.last_prices.last("MSFT") is None


async def test_fan_out_delivers_each_symbols_updates_in_order(pipeline: Pipeline) -> None:
    updates = [quote("AAPL" if i % 3 else "MSFT", f"{100 + i}", MINUTE) for i in range(30)]
    await pipeline.publish(*updates)
    await eventually(
        lambda: sum(len(decode_fanout(m)) for _, m in pipeline.received) == 30,
        message="30 fanned-out updates",
    )
    for symbol in ("AAPL", "MSFT"):
        sent = [u.bid for u in updates if u.symbol == symbol]
        got = [
            update.bid
            for channel, message in pipeline.received
            if channel == price_channel(symbol)
            for update in decode_fanout(message)
        ]
        assert got == sent


async def test_a_failing_observer_is_counted_and_the_others_still_run(pipeline: Pipeline) -> None:
    await pipeline.publish(trade("AAPL", "187.25", "100", MINUTE))
    await eventually(lambda: pipeline.exploding.calls >= 1)
    await eventually_equals(lambda: pipeline.candle_volumes("AAPL", Interval.M1), [Decimal("100")])
    failures = pipeline.metrics.registry.get_sample_value(
        "tradeloom_handler_failures_total",
        {"consumer": "market-data", "handler": "exploding"},
    )
    assert (failures or 0) >= 1


async def test_trades_build_candles_and_a_closed_bar_emits_candle_closed(
    pipeline: Pipeline,
) -> None:
    await pipeline.publish(
        trade("AAPL", "187.00", "10", MINUTE + timedelta(seconds=5)),
        trade("AAPL", "188.00", "20", MINUTE + timedelta(seconds=30)),
        trade("AAPL", "186.50", "5", MINUTE + timedelta(seconds=59)),
        trade("AAPL", "187.10", "1", MINUTE + timedelta(minutes=1, seconds=1)),
    )
    await eventually_equals(
        lambda: pipeline.candle_volumes("AAPL", Interval.M1), [Decimal("35"), Decimal("1")]
    )
    first = (await pipeline.market.candles.candles("AAPL", Interval.M1))[0]
    assert (first.open, first.high, first.low, first.close, first.trades) == (
        Decimal("187.00"),
        Decimal("188.00"),
        Decimal("186.50"),
        Decimal("186.50"),
        3,
    )
    assert await pipeline.candle_volumes("AAPL", Interval.M5) == [Decimal("36")]
    async with pipeline.database.connect() as conn:
        rows = (await conn.execute(select(outbox.c.payload))).scalars().all()
    closed = [decode_event(row).payload for row in rows]
    assert [(c.interval, c.start, c.volume) for c in closed if isinstance(c, CandleClosed)] == [
        ("1m", MINUTE, Decimal("35"))
    ]


async def test_a_redelivered_batch_is_not_counted_twice(pipeline: Pipeline) -> None:
    tick = PriceTick(trade("MSFT", "410", "7", MINUTE), MINUTE, "event-1")
    await pipeline.market.recorder.on_prices([tick])
    await pipeline.market.recorder.on_prices([tick])
    await pipeline.market.recorder.flush()
    assert await pipeline.candle_volumes("MSFT", Interval.M1) == [Decimal("7")]


async def test_a_restarted_recorder_resumes_the_open_bar(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    recorder = pipeline.market.recorder
    await recorder.on_prices([PriceTick(trade("MSFT", "410", "7", MINUTE), MINUTE, "e-1")])
    await recorder.stop()  # writes what it holds
    restarted = MarketData(
        bus=MemoryBus(MemoryBroker()),
        cache=pipeline.cache,
        database=pipeline.database,
        outbox=Outbox(),
        metrics=Metrics(),
        clock=SystemClock(),
        close_idle_bars=False,
    ).recorder
    await restarted.start()
    later = MINUTE + timedelta(seconds=20)
    await restarted.on_prices([PriceTick(trade("MSFT", "411", "3", later), later, "e-2")])
    await restarted.flush()
    [bar] = await pipeline.market.candles.candles("MSFT", Interval.M1)
    assert (bar.open, bar.high, bar.close, bar.volume, bar.trades) == (
        Decimal("410"),
        Decimal("411"),
        Decimal("411"),
        Decimal("10"),
        2,
    )
    await restarted.stop()

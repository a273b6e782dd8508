"""The market-data path on the production adapters: NATS JetStream carries the prices, Redis
holds last prices and fans them out, PostgreSQL keeps the candles, and candle.closed goes out
through the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.helpers import eventually, eventually_equals
from tradeloom.bootstrap import Platform, build_platform
from tradeloom.config import Settings
from tradeloom.domain.events import CandleClosed, Event, PriceUpdate
from tradeloom.domain.market import Interval, bar_start
from tradeloom.market_data.observers import decode_fanout, price_channel
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.messaging.topics import MARKET_CANDLES
from tradeloom.storage.migrate import upgrade_database

# Taken when the module is imported, before any test of the session ran: no other test's
# real-time prices fall in these minutes of the shared candles table.
MINUTE = bar_start(datetime.now(UTC), Interval.M1) - timedelta(minutes=3)
# Symbols no other test trades: the candles table is shared by the session's tests, and a
# platform resumes every open bar it finds there at start (a later MSFT bar of another test
# would make this test's older MSFT updates late for it).
SYMBOLS = ("XAAPL", "XMSFT", "XNVDA", "XAMZN", "XTSLA")


@pytest.fixture
async def platform(
    postgres_url: str, nats_url: str, redis_url: str, unique: str
) -> AsyncIterator[Platform]:
    await upgrade_database(postgres_url)
    namespace = f"md{unique}"
    settings = Settings(
        database_url=postgres_url, bus_url=nats_url, cache_url=redis_url, namespace=namespace
    )
    built = build_platform(settings, close_idle_bars=False)
    await built.start()
    yield built
    await built.close()
    await delete_bus_streams(nats_url, namespace.upper())


def update(symbol: str, n: int) -> PriceUpdate:
    return PriceUpdate(
        symbol=symbol,
        bid=Decimal(100 + n),
        ask=Decimal(100 + n) + Decimal("0.02"),
        last=Decimal(100 + n) + Decimal("0.01"),
        volume=Decimal(n + 1),
        exchange_time=MINUTE + timedelta(seconds=n),
        venue="TEST",
    )


async def test_prices_flow_in_order_to_cache_candles_and_subscribers(platform: Platform) -> None:
    received: dict[str, list[Decimal | None]] = {symbol: [] for symbol in SYMBOLS}

    def on_message(channel: str, message: bytes) -> None:
        for price in decode_fanout(message):
            received[price.symbol].append(price.bid)

    for symbol in SYMBOLS:
        await platform.cache.subscribe(price_channel(symbol), on_message)
    closed: list[CandleClosed] = []

    async def on_candle(events: Sequence[Event]) -> None:
        closed.extend(e.payload for e in events if isinstance(e.payload, CandleClosed))

    await platform.bus.subscribe_batch(MARKET_CANDLES.name, "test-candles", on_candle)

    publisher = platform.market_data.publisher
    for n in range(70):  # 70 seconds: the 15:00 minute closes when 15:01 trades arrive
        for symbol in SYMBOLS:
            await publisher.submit(update(symbol, n))
    await eventually(lambda: all(len(bids) == 70 for bids in received.values()), within=20)
    for symbol in SYMBOLS:
        assert received[symbol] == [Decimal(100 + n) for n in range(70)], symbol

    # Those prices are minutes old: too stale to be served as last prices. A fresh one is.
    assert await platform.market_data.last_prices.last("XNVDA") is None
    fresh = PriceUpdate(
        symbol="XNVDA",
        bid=Decimal("880.10"),
        ask=Decimal("880.12"),
        last=None,
        volume=Decimal(0),
        exchange_time=datetime.now(UTC),
        venue="TEST",
    )
    await publisher.submit(fresh)

    async def last_bid() -> Decimal | None:
        price = await platform.market_data.last_prices.last("XNVDA")
        return None if price is None else price.bid

    await eventually_equals(last_bid, Decimal("880.10"))

    async def minute_volumes() -> list[Decimal]:
        bars = await platform.market_data.candles.candles(
            "XMSFT", Interval.M1, MINUTE, MINUTE + timedelta(minutes=2)
        )
        return [bar.volume for bar in bars]

    first_minute = sum(Decimal(n + 1) for n in range(60))
    later = sum(Decimal(n + 1) for n in range(60, 70))
    await eventually_equals(minute_volumes, [first_minute, later])

    # The first minute closes once per symbol. Later bars may close too, in any order with
    # these (the fresh NVDA price minutes later, or the wall-clock closer of idle bars, which
    # finds the other symbols' 15:01 bars long over), but no bar closes twice.
    def first_minute_closes() -> list[tuple[str, str, datetime, Decimal]]:
        return sorted(
            (c.symbol, c.interval, c.start, c.volume)
            for c in closed
            if c.interval == "1m" and c.start == MINUTE
        )

    await eventually(lambda: len(first_minute_closes()) >= len(SYMBOLS), within=20)
    assert first_minute_closes() == sorted(
        (symbol, "1m", MINUTE, first_minute) for symbol in SYMBOLS
    )
    bars = [(c.symbol, c.interval, c.start) for c in closed]
    assert len(bars) == len(set(bars)), bars

"""The market-data service of one process: publishing feeds, and consuming prices into the
last-price cache, candles and per-symbol fan-out.

Both halves can run in one process (the embedded default and the demo) or apart: an ingestion
process only runs feeds through :attr:`MarketData.publisher`, consumer processes only
``start`` the consumer side. Other services add their own observers (risk, strategies)
through ``extra_observers``. ``latency_probe`` receives every update's feed-to-cache latency
(see :class:`~tradeloom.market_data.observers.LastPriceObserver`); the benchmark uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tradeloom.cache.port import Cache
from tradeloom.domain.time import Clock
from tradeloom.market_data.candle_recorder import CandleRecorder
from tradeloom.market_data.candle_store import CandleQueries
from tradeloom.market_data.consumer import PriceConsumer, PriceObserver
from tradeloom.market_data.last_prices import PRICE_TTL, LastPrices
from tradeloom.market_data.observers import LastPriceObserver, LatencyProbe, PriceFanout
from tradeloom.market_data.publisher import PricePublisher
from tradeloom.messaging.port import EventBus
from tradeloom.observability.metrics import Metrics
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox


class MarketData:
    def __init__(
        self,
        *,
        bus: EventBus,
        cache: Cache,
        database: Database,
        outbox: Outbox,
        metrics: Metrics,
        clock: Clock,
        notify_outbox: Callable[[], None] = lambda: None,
        close_idle_bars: bool = True,
        price_ttl: float = PRICE_TTL,
        extra_observers: Sequence[PriceObserver] = (),
        latency_probe: LatencyProbe | None = None,
        consume: bool = True,
    ) -> None:
        self._consume = consume
        self.last_prices = LastPrices(cache, clock, ttl=price_ttl)
        self.candles = CandleQueries(database)
        self.recorder = CandleRecorder(
            database,
            outbox,
            metrics,
            clock,
            notify=notify_outbox,
            close_idle_bars=close_idle_bars,
        )
        observers: list[PriceObserver] = [
            LastPriceObserver(self.last_prices, metrics, clock, latency_probe=latency_probe),
            self.recorder,
            PriceFanout(cache),
            *extra_observers,
        ]
        self.consumer = PriceConsumer(bus, observers, metrics)
        self.publisher = PricePublisher(bus, metrics, clock)

    async def start(self) -> None:
        """Start the publisher, and the consumer side unless built with ``consume=False``
        (a process that only reads last prices and candles, or only publishes)."""
        if self._consume:
            await self.recorder.start()
            await self.consumer.start()
        await self.publisher.start()

    async def stop(self) -> None:
        await self.publisher.stop()
        if self._consume:
            await self.consumer.stop()
            await self.recorder.stop()

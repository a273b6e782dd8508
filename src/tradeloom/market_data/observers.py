"""The observers of consumed prices that live in the cache: last prices and fan-out."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from tradeloom.cache.port import Cache
from tradeloom.domain.time import Clock
from tradeloom.market_data.consumer import PriceTick
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.observability.metrics import Metrics

PRICE_CHANNEL_PREFIX = "prices:"

_encoder = msgspec.json.Encoder(decimal_format="string")


def price_channel(symbol: str) -> str:
    """The pub/sub channel of one symbol's updates (web tier, strategies)."""
    return PRICE_CHANNEL_PREFIX + symbol


class LastPriceObserver:
    """Keeps the last-price cache current and measures feed-to-cache latency."""

    name = "last_price"

    def __init__(self, last_prices: LastPrices, metrics: Metrics, clock: Clock) -> None:
        self._last_prices = last_prices
        self._metrics = metrics
        self._clock = clock

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None:
        await self._last_prices.record(tick.update for tick in ticks)
        now = self._clock.now()
        histogram = self._metrics.feed_to_cache_seconds
        for tick in ticks:
            histogram.observe(max(0.0, (now - tick.received_at).total_seconds()))


class PriceFanout:
    """Publishes every update, in order, on its symbol's channel in one round trip."""

    name = "fanout"

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None:
        await self._cache.publish_many(
            [(price_channel(tick.update.symbol), _encoder.encode(tick.update)) for tick in ticks]
        )

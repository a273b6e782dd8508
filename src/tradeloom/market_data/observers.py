"""The observers of consumed prices that live in the cache: last prices and fan-out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from tradeloom.cache.port import Cache
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.time import Clock
from tradeloom.market_data.consumer import PriceTick
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.observability.metrics import Metrics

PRICE_CHANNEL_PREFIX = "prices:"

_encoder = msgspec.json.Encoder(decimal_format="string")
_fanout_decoder = msgspec.json.Decoder(list[PriceUpdate])


LatencyProbe = Callable[[float], None]
"""Receives each update's feed-to-cache latency in seconds (benchmarks want exact percentiles;
the Prometheus histogram only has buckets)."""


def price_channel(symbol: str) -> str:
    """The pub/sub channel of one symbol's updates (web tier, strategies)."""
    return PRICE_CHANNEL_PREFIX + symbol


class LastPriceObserver:
    """Keeps the last-price cache current and measures feed-to-cache latency.

    The latency of every update (from its feed handing it over to the cache write having
    completed) goes to the ``tradeloom_feed_to_cache_seconds`` histogram and, when given, to
    ``latency_probe``.
    """

    name = "last_price"

    def __init__(
        self,
        last_prices: LastPrices,
        metrics: Metrics,
        clock: Clock,
        *,
        latency_probe: LatencyProbe | None = None,
    ) -> None:
        self._last_prices = last_prices
        self._metrics = metrics
        self._clock = clock
        self._latency_probe = latency_probe

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None:
        await self._last_prices.record(tick.update for tick in ticks)
        now = self._clock.now()
        histogram = self._metrics.feed_to_cache_seconds
        probe = self._latency_probe
        for tick in ticks:
            latency = max(0.0, (now - tick.received_at).total_seconds())
            histogram.observe(latency)
            if probe is not None:
                probe(latency)


class PriceFanout:
    """Publishes each symbol's updates of a batch, in order, as one message on the symbol's
    channel (a JSON array of updates); all channels go out in one round trip."""

    name = "fanout"

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None:
        by_symbol: dict[str, list[PriceUpdate]] = {}
        for tick in ticks:
            by_symbol.setdefault(tick.update.symbol, []).append(tick.update)
        await self._cache.publish_many(
            [
                (price_channel(symbol), _encoder.encode(updates))
                for symbol, updates in by_symbol.items()
            ]
        )


def decode_fanout(message: bytes) -> list[PriceUpdate]:
    """The updates of one fan-out message, oldest first."""
    return _fanout_decoder.decode(message)

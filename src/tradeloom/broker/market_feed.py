"""Prices for simulated venues: a market-data observer that forwards quotes to a broker.

Registered on the price consumer like any observer; it hands each update to the adapter (the
paper broker queues it for its own thread, a real broker ignores it), in the consumer's
per-symbol order, one batch at a time. Never blocks: the adapter only enqueues the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.consumer import PriceTick


class TakesPrices(Protocol):
    def on_prices(self, updates: Sequence[PriceUpdate]) -> None: ...


class BrokerPriceFeed:
    """A ``PriceObserver`` feeding a broker adapter (or the gateway in front of it)."""

    def __init__(self, broker: TakesPrices, name: str = "broker-prices") -> None:
        self.name = name
        self._broker = broker

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None:
        self._broker.on_prices([tick.update for tick in ticks])

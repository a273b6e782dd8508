"""Prices for simulated venues: a market-data observer that forwards quotes to a broker.

Registered on the price consumer like any observer; it hands each update to the adapter (the
paper broker queues it for its own thread, a real broker ignores it), in the consumer's
per-symbol order. Never blocks: the adapter's ``on_price`` only enqueues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.consumer import PriceTick


class TakesPrices(Protocol):
    def on_price(self, update: PriceUpdate) -> None: ...


class BrokerPriceFeed:
    """A ``PriceObserver`` feeding a broker adapter (or the gateway in front of it)."""

    def __init__(self, broker: TakesPrices, name: str = "broker-prices") -> None:
        self.name = name
        self._broker = broker

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None:
        for tick in ticks:
            self._broker.on_price(tick.update)

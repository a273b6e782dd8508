"""The market-data consumer: ``market.price`` in, observers out.

It consumes the topic in batches as one consumer group and hands every batch to each
registered observer (the last-price cache, the candle recorder, the fan-out, later risk and
strategies). Observers are isolated from each other: one that raises is logged with the
symbols of the batch and counted in ``tradeloom_handler_failures``, and the others still run.
A failing observer does not make the batch redeliver, since prices are best effort and the
next update supersedes this one; an observer that must not miss updates handles its own
retries.

Per-symbol order holds end to end: the publisher keys updates by symbol, the bus hands a
group the events of one key in order, and observers get each batch in that order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from tradeloom.domain.events import Event, PriceBatch, PriceUpdate
from tradeloom.messaging.port import ConsumerOptions, EventBus, RetryPolicy, Subscription
from tradeloom.messaging.topics import MARKET_PRICE
from tradeloom.observability.metrics import Metrics

log = structlog.get_logger("tradeloom.market_data.consumer")


@dataclass(frozen=True, slots=True)
class PriceTick:
    """One update as consumed: the update, when its feed received it, and its event id."""

    update: PriceUpdate
    received_at: datetime
    event_id: str


def unpack(events: Sequence[Event]) -> list[PriceTick]:
    """The updates carried by ``events`` in order; an update's id is its event's id and its
    place in the batch, so a redelivered batch yields the same ids."""
    ticks: list[PriceTick] = []
    for event in events:
        payload = event.payload
        if isinstance(payload, PriceBatch):
            ticks += [
                PriceTick(update, event.occurred_at, f"{event.id}/{index}")
                for index, update in enumerate(payload.updates)
            ]
        elif isinstance(payload, PriceUpdate):
            ticks.append(PriceTick(payload, event.occurred_at, event.id))
        else:
            log.warning("market_data.unexpected_event", type=event.type, id=event.id)
    return ticks


class PriceObserver(Protocol):
    """Something that reacts to consumed prices. ``name`` labels its failures."""

    name: str

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None: ...


class PriceConsumer:
    def __init__(
        self,
        bus: EventBus,
        observers: Sequence[PriceObserver],
        metrics: Metrics,
        *,
        group: str = "market-data",
        max_batch: int = 50,
        max_wait: float = 0.005,
    ) -> None:
        self._bus = bus
        self._observers = tuple(observers)
        self._metrics = metrics
        self._group = group
        self._options = ConsumerOptions(
            retry=RetryPolicy(max_attempts=3), max_batch=max_batch, max_wait=max_wait
        )
        self._subscription: Subscription | None = None
        self.consumed = 0
        self._progress = asyncio.Event()

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe_batch(
            MARKET_PRICE.name, self._group, self.handle, self._options
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None

    async def handle(self, events: Sequence[Event]) -> None:
        """Hand one batch to every observer concurrently; never raises for an observer."""
        ticks = unpack(events)
        if ticks:
            await asyncio.gather(*(self._notify(o, ticks) for o in self._observers))
            self._metrics.price_updates.labels("consumed").inc(len(ticks))
        self.consumed += len(ticks)
        self._progress.set()

    async def wait_until_consumed(self, count: int, within: float = 60.0) -> None:
        """Wait until ``count`` updates were handled by every observer (the end of a replay);
        raises TimeoutError after ``within`` seconds."""
        async with asyncio.timeout(within):
            while self.consumed < count:
                self._progress.clear()
                await self._progress.wait()

    async def _notify(self, observer: PriceObserver, ticks: Sequence[PriceTick]) -> None:
        try:
            await observer.on_prices(ticks)
        except Exception:
            symbols = sorted({tick.update.symbol for tick in ticks})
            log.exception(
                "market_data.observer_failed",
                observer=observer.name,
                symbols=symbols[:20],
                updates=len(ticks),
            )
            self._metrics.handler_failures.labels(self._group, observer.name).inc()

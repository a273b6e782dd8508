"""Feeds to the bus: each normalized update becomes a ``market.price`` event keyed by symbol.

Updates are published in micro-batches: a flusher takes whatever has queued up while the
previous batch was in flight (up to ``max_batch``) and publishes it pipelined with
``publish_many``. Under light load a batch is one update, so latency stays low; under heavy
load batches grow and throughput follows. The queue is bounded: when the bus falls behind,
feeds wait (back-pressure to their sockets) instead of growing memory without limit.

The event's ``occurred_at`` is when the feed handed the update over, which is where
feed-to-cache latency is measured from. Per-symbol order is the order feeds produce.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from tradeloom.domain.events import Event, PriceUpdate, new_event
from tradeloom.domain.time import Clock
from tradeloom.market_data.feeds.base import Feed
from tradeloom.messaging.port import EventBus
from tradeloom.messaging.topics import MARKET_PRICE
from tradeloom.observability.metrics import Metrics

log = structlog.get_logger("tradeloom.market_data.publisher")


class PricePublisher:
    def __init__(
        self,
        bus: EventBus,
        metrics: Metrics,
        clock: Clock,
        *,
        max_batch: int = 1000,
        queue_size: int = 20_000,
    ) -> None:
        self._bus = bus
        self._metrics = metrics
        self._clock = clock
        self._max_batch = max_batch
        self._queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self._flusher: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="price-publisher")

    async def stop(self) -> None:
        """Publish what is queued, then stop."""
        await self._queue.join()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None

    async def submit(self, update: PriceUpdate, source: str) -> None:
        """Queue one update; waits while the queue is full."""
        event = new_event(update, occurred_at=self._clock.now(), correlation_id=source)
        await self._queue.put(event)

    async def publish_feed(self, feed: Feed) -> None:
        """Publish every update of ``feed`` until it ends or this task is cancelled."""
        async for update in feed.updates():
            await self.submit(update, feed.name)

    async def _flush_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._publish(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _publish(self, batch: list[Event]) -> None:
        items = [
            (event, event.payload.symbol)
            for event in batch
            if isinstance(event.payload, PriceUpdate)
        ]
        delay = 0.05
        while True:
            try:
                await self._bus.publish_many(MARKET_PRICE.name, items)
                break
            except Exception:
                # Prices are loss-tolerant, but a short outage should not drop a whole batch:
                # retry briefly (dedup absorbs repeats), then give the batch up and move on.
                if delay > 2.0:
                    log.exception("market_data.publish_dropped", updates=len(items))
                    self._metrics.price_updates.labels("dropped").inc(len(items))
                    return
                log.warning("market_data.publish_retry", updates=len(items), retry_in=delay)
                await asyncio.sleep(delay)
                delay *= 2
        self.published += len(items)
        self._metrics.price_updates.labels("published").inc(len(items))

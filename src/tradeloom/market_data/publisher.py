"""Feeds to the bus: normalized updates go to ``market.price`` in per-shard batches.

A bus message per update costs more CPU than Python can spend at 20,000 updates/s (measured:
about 100 µs of client work per JetStream message, see README, Performance). So the publisher
batches: a flusher takes whatever has queued while the previous flush was in flight (up to
``max_batch``, after lingering ``linger`` seconds for more to arrive), splits it by shard and
publishes one :class:`PriceBatch` event per shard, keyed ``shard-N``. A symbol always belongs
to the same shard (a stable hash), so each symbol's updates stay in feed order end to end
while shards spread over the bus partitions. Under light
load a batch holds few updates and latency stays within ``linger`` of the bus's own; under
load batches grow and so does throughput (at 20,000 updates/s and the default 10 ms linger,
about 200 updates a flush in 16 events rather than 200 events).

The queue is bounded: when the bus falls behind, feeds wait (back-pressure to their sockets)
rather than memory growing without limit. The event's ``occurred_at`` is when the batch's
first update was handed over by its feed: feed-to-cache latency is measured from there.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import structlog

from tradeloom.domain.events import Event, PriceBatch, PriceUpdate, new_event
from tradeloom.domain.time import Clock
from tradeloom.market_data.feeds.base import Feed
from tradeloom.messaging.partitioning import partition_of
from tradeloom.messaging.port import EventBus
from tradeloom.messaging.topics import MARKET_PRICE
from tradeloom.observability.metrics import Metrics

log = structlog.get_logger("tradeloom.market_data.publisher")

SHARDS = 16
_Queued = tuple[PriceUpdate, datetime]


def shard_key(symbol: str) -> str:
    """The bus key of a symbol's batches; the same for a symbol forever."""
    return f"shard-{partition_of(symbol, SHARDS)}"


class PricePublisher:
    def __init__(
        self,
        bus: EventBus,
        metrics: Metrics,
        clock: Clock,
        *,
        max_batch: int = 2000,
        queue_size: int = 50_000,
        linger: float = 0.01,
    ) -> None:
        self._bus = bus
        self._metrics = metrics
        self._clock = clock
        self._max_batch = max_batch
        self._linger = linger
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(queue_size)
        self._flusher: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="price-publisher")

    async def stop(self, within: float = 10.0) -> None:
        """Publish what is queued (for up to ``within`` seconds), then stop."""
        if self._flusher is not None:
            if not self._flusher.done():
                try:
                    await asyncio.wait_for(self._queue.join(), within)
                except TimeoutError:
                    log.warning("market_data.publisher_stop_dropped", queued=self._queue.qsize())
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None

    async def submit(self, update: PriceUpdate) -> None:
        """Queue one update; waits while the queue is full."""
        await self._queue.put((update, self._clock.now()))

    async def publish_feed(self, feed: Feed) -> None:
        """Publish every update of ``feed`` until it ends or this task is cancelled."""
        async for update in feed.updates():
            await self.submit(update)

    async def _flush_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._linger and self._queue.qsize() < self._max_batch:
                await asyncio.sleep(self._linger)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._publish(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _publish(self, batch: list[_Queued]) -> None:
        shards: dict[str, list[_Queued]] = {}
        for item in batch:
            shards.setdefault(shard_key(item[0].symbol), []).append(item)
        items = [(self._event(queued), key) for key, queued in shards.items()]
        delay = 0.05
        while True:
            try:
                await self._bus.publish_many(MARKET_PRICE.name, items)
                break
            except Exception:
                # Prices are loss-tolerant, but a short outage should not drop a whole batch:
                # retry briefly (event-id dedup absorbs repeats), then give it up and go on.
                if delay > 2.0:
                    log.exception("market_data.publish_dropped", updates=len(batch))
                    self._metrics.price_updates.labels("dropped").inc(len(batch))
                    return
                log.warning("market_data.publish_retry", updates=len(batch), retry_in=delay)
                await asyncio.sleep(delay)
                delay *= 2
        self.published += len(batch)
        self._metrics.price_updates.labels("published").inc(len(batch))

    @staticmethod
    def _event(queued: list[_Queued]) -> Event:
        payload = PriceBatch(updates=tuple(update for update, _ in queued))
        return new_event(payload, occurred_at=queued[0][1], correlation_id="market-data")

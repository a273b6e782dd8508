"""Builds 1m/5m/1h candles from consumed prices and keeps them in the database.

Each batch is folded into the :class:`~tradeloom.domain.market.CandleAggregator` in memory,
without waiting for the database: at 20,000 updates/s a transaction per consumed batch would
hold the consumer back. Every ``flush_interval`` (0.25 s) the bars changed since the last
flush are upserted and the bars closed are written as final together with their
``candle.closed`` events, in ONE transaction through the outbox (no dual write). A clock tick
closes the bars of quiet symbols ``grace`` seconds after their end, so a bar closes even when
no later trade arrives. On start, the bars left open by a previous process are resumed.

The price of writing behind: a crash loses at most the last ``flush_interval`` of changes to
the open bars (their updates were already acknowledged on the bus). Candles are derived data:
the audit archive keeps every price, from which they can be rebuilt.

Idempotent within a process: the ids of recently applied bus events (a batch of updates each)
are remembered, so a batch the bus delivers again (a partition changing hands, an ack lost) is
not counted twice; and a closed bar's row is never written again. After a restart a
redelivered batch of a bar still open can count twice: candles are derived data, rebuilt from
the audit archive when exactness matters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog

from tradeloom.domain.events import CandleClosed, Event, new_event
from tradeloom.domain.market import Candle, CandleAggregator
from tradeloom.domain.time import Clock
from tradeloom.market_data.candle_store import CandleQueries, save_candles
from tradeloom.market_data.consumer import PriceTick
from tradeloom.messaging.topics import MARKET_CANDLES
from tradeloom.observability.metrics import Metrics
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox

log = structlog.get_logger("tradeloom.market_data.candles")


def _batch_of(tick: PriceTick) -> str:
    """The bus event a tick came in (its id is ``<event id>/<index>`` for batched ticks)."""
    return tick.event_id.split("/", 1)[0]


REMEMBERED_EVENT_IDS = 200_000


class CandleRecorder:
    name = "candles"

    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        metrics: Metrics,
        clock: Clock,
        *,
        notify: Callable[[], None] = lambda: None,
        close_idle_bars: bool = True,
        grace: float = 2.0,
        tick_interval: float = 1.0,
        flush_interval: float = 0.25,
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._metrics = metrics
        self._clock = clock
        self._notify = notify
        self._close_idle_bars = close_idle_bars
        self._grace = timedelta(seconds=grace)
        self._tick_interval = tick_interval
        self._aggregator = CandleAggregator()
        self._flush_interval = flush_interval
        self._applied: OrderedDict[str, None] = OrderedDict()
        self._dirty: dict[tuple[str, str, datetime], Candle] = {}
        self._closed: list[Candle] = []
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Resume the bars a previous process left open, then start closing idle bars."""
        for bar in await CandleQueries(self._database).open_bars():
            self._aggregator.resume(bar)
        self._tasks.append(asyncio.create_task(self._flush_forever(), name="candle-flusher"))
        if self._close_idle_bars:
            self._tasks.append(asyncio.create_task(self._close_idle(), name="candle-ticker"))

    async def stop(self) -> None:
        """Stop ticking and flushing, then write what is left."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush()

    def open_bars(self) -> tuple[Candle, ...]:
        return self._aggregator.open_bars()

    async def on_prices(self, ticks: Sequence[PriceTick]) -> None:
        """Fold a batch in (no I/O: the flusher writes it)."""
        seen_before = {batch for batch in map(_batch_of, ticks) if batch in self._applied}
        for tick in ticks:
            batch = _batch_of(tick)
            if batch in seen_before:
                continue
            self._closed.extend(self._aggregator.fold(tick.update))
            self._remember(batch)

    async def close_through_now(self) -> int:
        """Close every bar that ended ``grace`` ago or earlier and write them; returns how
        many closed."""
        closed = self._aggregator.close_through(self._clock.now() - self._grace)
        self._closed.extend(closed)
        await self.flush()
        return len(closed)

    async def close_all(self) -> int:
        """Close every open bar (the end of a replay) and write them; returns how many."""
        bars = self._aggregator.open_bars()
        closed = self._aggregator.close_through(max(bar.end for bar in bars)) if bars else ()
        self._closed.extend(closed)
        await self.flush()
        return len(closed)

    async def flush(self) -> None:
        """Write the bars changed and closed since the last flush, in one transaction."""
        async with self._write_lock:
            for candle in self._aggregator.take_changed():
                self._dirty[(candle.symbol, candle.interval.value, candle.start)] = candle
            dirty, closed = self._dirty, self._closed
            self._dirty, self._closed = {}, []
            finished = {(c.symbol, c.interval.value, c.start) for c in closed}
            open_bars = [bar for key, bar in dirty.items() if key not in finished]
            try:
                await self._write(open_bars, closed)
            except BaseException:
                # Put them back (newer changes win) so the next flush tries again.
                self._dirty = {
                    **{(b.symbol, b.interval.value, b.start): b for b in open_bars},
                    **self._dirty,
                }
                self._closed = [*closed, *self._closed]
                raise

    async def _write(self, open_bars: Sequence[Candle], closed: Sequence[Candle]) -> None:
        if not open_bars and not closed:
            return
        events = [(MARKET_CANDLES.name, bar.symbol, self._closed_event(bar)) for bar in closed]
        async with self._database.transaction() as conn:
            await save_candles(conn, open_bars, closed)
            await self._outbox.add_many(conn, events)
        for bar in closed:
            self._metrics.candles_closed.labels(bar.interval.value).inc()
        if events:
            self._notify()

    def _closed_event(self, bar: Candle) -> Event:
        payload = CandleClosed(
            symbol=bar.symbol,
            interval=bar.interval.value,
            start=bar.start,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=bar.volume,
            trades=bar.trades,
        )
        return new_event(payload, occurred_at=self._clock.now(), correlation_id="candles")

    def _remember(self, batch: str) -> None:
        if batch in self._applied:
            return
        self._applied[batch] = None
        if len(self._applied) > REMEMBERED_EVENT_IDS:
            self._applied.popitem(last=False)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("market_data.candle_flush_failed")

    async def _close_idle(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            try:
                await self.close_through_now()
            except Exception:
                log.exception("market_data.candle_tick_failed")

"""Instruments, candle intervals, OHLCV candles and their aggregation from price updates.

Pure: no I/O, no clock reads. The market-data consumer feeds :class:`CandleAggregator` with
:class:`~tradeloom.domain.events.PriceUpdate` values and a clock tick; it answers which bars
changed and which closed, and the consumer persists and publishes those.

Rules the aggregator guarantees (and the tests prove):

* **Trades only.** An update is a trade print when it carries ``last``: ``last`` is the trade
  price and ``volume`` the quantity traded in that print. An update without ``last`` (a pure
  quote) changes no candle.
* **UTC boundaries.** A bar of interval ``I`` starts at a multiple of ``I`` since the Unix
  epoch, so 1m bars start on whole minutes and 1h bars on whole hours, in UTC.
* **Gaps are gaps.** A minute with no trade produces no bar at all: no flat bar repeating the
  previous close is invented. Charts and queries show the gap; whoever wants filled series
  fills them at read time.
* **Open and close by exchange time.** ``open`` is the price of the earliest trade in the bar
  and ``close`` that of the latest, by ``exchange_time``; trades with the same time keep their
  arrival order. So a late update that still falls inside the open bar can change its open.
* **Closing.** A bar closes when a trade for a later bar of the same symbol arrives, or when
  :meth:`CandleAggregator.close_through` is called with a moment at or after the bar's end
  (driven by a clock tick, so quiet symbols close their bars too).
* **Late updates.** A trade older than the open 1-minute bar of its symbol (or older than the
  last ``close_through`` boundary) is counted in ``late`` and ignored by every interval. It is
  decided once, on the finest interval, so 5m and 1h bars are always exactly the aggregation
  of the 1m bars (:func:`roll_up`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum

from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.numbers import ZERO, exact
from tradeloom.domain.time import require_utc

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidInstrument(DomainError, ValueError):
    """Instrument terms that cannot trade: a non-positive tick, lot or reference price."""

    code = "invalid_instrument"


@dataclass(frozen=True, slots=True)
class Instrument:
    """A tradable symbol with the grid its prices and quantities live on."""

    symbol: str
    tick_size: Decimal
    lot_size: Decimal
    reference_price: Decimal
    venue: str = "SIMX"

    def __post_init__(self) -> None:
        if not self.symbol or not self.symbol.strip():
            raise InvalidInstrument("symbol must not be empty")
        for name in ("tick_size", "lot_size", "reference_price"):
            value = exact(getattr(self, name), field=f"{self.symbol}.{name}")
            if value <= 0:
                raise InvalidInstrument(f"{self.symbol}.{name} must be positive, got {value}")
            object.__setattr__(self, name, value)


class Interval(Enum):
    """Candle intervals; the value is the name used in APIs, the CLI and storage."""

    M1 = "1m"
    M5 = "5m"
    H1 = "1h"

    @property
    def length(self) -> timedelta:
        return _LENGTHS[self]

    @classmethod
    def parse(cls, text: str) -> Interval:
        """``"1m"`` → ``Interval.M1``; raises ``ValueError`` listing the known names."""
        try:
            return cls(text)
        except ValueError:
            known = ", ".join(member.value for member in cls)
            raise ValueError(f"unknown interval {text!r}; expected one of {known}") from None


_LENGTHS = {
    Interval.M1: timedelta(minutes=1),
    Interval.M5: timedelta(minutes=5),
    Interval.H1: timedelta(hours=1),
}


def bar_start(moment: datetime, interval: Interval) -> datetime:
    """The start of the ``interval`` bar holding ``moment``: a UTC multiple of its length."""
    require_utc(moment, field="moment")
    return moment - (moment - EPOCH) % interval.length


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bar of one symbol; ``trades`` counts the prints it aggregates."""

    symbol: str
    interval: Interval
    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int

    @property
    def end(self) -> datetime:
        """The first moment no longer in this bar."""
        return self.start + self.interval.length


def roll_up(candles: Iterable[Candle], interval: Interval) -> list[Candle]:
    """Aggregate finer candles of one or more symbols into ``interval`` bars.

    The inputs must not overlap (bars of one interval); they may come in any order. The result
    is sorted by symbol, then start.
    """
    groups: dict[tuple[str, datetime], list[Candle]] = {}
    for candle in candles:
        if interval.length % candle.interval.length:
            raise ValueError(f"cannot roll {candle.interval.value} bars into {interval.value}")
        key = (candle.symbol, bar_start(candle.start, interval))
        groups.setdefault(key, []).append(candle)
    return [_merge(key[0], key[1], interval, parts) for key, parts in sorted(groups.items())]


def _merge(symbol: str, start: datetime, interval: Interval, parts: list[Candle]) -> Candle:
    ordered = sorted(parts, key=lambda candle: candle.start)
    return Candle(
        symbol=symbol,
        interval=interval,
        start=start,
        open=ordered[0].open,
        high=max(candle.high for candle in ordered),
        low=min(candle.low for candle in ordered),
        close=ordered[-1].close,
        volume=sum((candle.volume for candle in ordered), ZERO),
        trades=sum(candle.trades for candle in ordered),
    )


@dataclass(slots=True)
class _OpenBar:
    """A bar still taking trades, kept mutable because it changes with every trade (a new
    frozen Candle per trade and interval cost more than the rest of the aggregation);
    :attr:`candle` is an immutable snapshot. ``open_time``/``close_time`` decide which trade is
    the open and which the close."""

    symbol: str
    interval: Interval
    start: datetime
    end: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int
    open_time: datetime
    close_time: datetime

    @classmethod
    def of(cls, bar: Candle, open_time: datetime, close_time: datetime) -> _OpenBar:
        return cls(
            bar.symbol,
            bar.interval,
            bar.start,
            bar.end,
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
            bar.trades,
            open_time,
            close_time,
        )

    @property
    def candle(self) -> Candle:
        return Candle(
            self.symbol,
            self.interval,
            self.start,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.trades,
        )

    def add(self, price: Decimal, volume: Decimal, moment: datetime) -> None:
        if moment < self.open_time:
            self.open, self.open_time = price, moment
        if moment >= self.close_time:
            self.close, self.close_time = price, moment
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.volume += volume
        self.trades += 1


@dataclass(frozen=True, slots=True)
class CandleChanges:
    """What one call changed: bars updated (still open) and bars closed (final)."""

    updated: tuple[Candle, ...] = ()
    closed: tuple[Candle, ...] = ()
    late: bool = False


@dataclass
class CandleAggregator:
    """Builds candles of several intervals from trade prints; see the module rules.

    Not thread-safe: one aggregator belongs to one consumer task. Its memory holds one open bar
    per (symbol, interval).
    """

    intervals: Sequence[Interval] = (Interval.M1, Interval.M5, Interval.H1)
    late: int = 0
    _open: dict[tuple[str, Interval], _OpenBar] = field(default_factory=dict, repr=False)
    _floor: dict[str, datetime] = field(default_factory=dict, repr=False)
    _closed_through: datetime | None = field(default=None, repr=False)
    _changed: set[tuple[str, Interval]] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if not self.intervals:
            raise ValueError("at least one interval is needed")
        self.intervals = tuple(sorted(set(self.intervals), key=lambda i: i.length))
        finest = self.intervals[0].length
        for interval in self.intervals:
            if interval.length % finest:
                raise ValueError(f"{interval.value} is not a multiple of {self.intervals[0].value}")

    def apply(self, update: PriceUpdate) -> CandleChanges:
        """Fold one update in; a quote (no ``last``) or a late trade changes nothing.
        Returns snapshots of the bars it changed and of those it closed."""
        if update.last is None:
            return CandleChanges()
        late = self.late
        closed = self.fold(update)
        if self.late != late:
            return CandleChanges(late=True)
        updated = tuple(self._open[(update.symbol, i)].candle for i in self.intervals)
        return CandleChanges(updated=updated, closed=closed)

    def fold(self, update: PriceUpdate) -> tuple[Candle, ...]:
        """Fold one update in, the cheap way for a consumer: returns only the bars it closed;
        the bars it changed are remembered for :meth:`take_changed`."""
        price = update.last
        if price is None:
            return ()
        moment = require_utc(update.exchange_time, field="exchange_time")
        symbol = update.symbol
        finest = self._open.get((symbol, self.intervals[0]))
        if finest is None or not finest.start <= moment < finest.end:
            finest_start = bar_start(moment, self.intervals[0])
            if finest_start < self._floor_of(symbol):
                self.late += 1
                return ()
            self._floor[symbol] = finest_start
        elif finest.start < self._floor_of(symbol):
            self.late += 1
            return ()
        closed: list[Candle] = []
        for interval in self.intervals:
            bar, finished = self._bar_for(symbol, interval, price, moment)
            bar.add(price, update.volume, moment)
            self._changed.add((symbol, interval))
            if finished is not None:
                closed.append(finished)
        return tuple(closed)

    def take_changed(self) -> tuple[Candle, ...]:
        """Snapshots of the still-open bars changed since the last call."""
        changed = tuple(self._open[key].candle for key in self._changed if key in self._open)
        self._changed.clear()
        return changed

    def _bar_for(
        self, symbol: str, interval: Interval, price: Decimal, moment: datetime
    ) -> tuple[_OpenBar, Candle | None]:
        """The open bar holding ``moment``, and the bar it replaced if that one just closed."""
        key = (symbol, interval)
        bar = self._open.get(key)
        if bar is not None and bar.start <= moment < bar.end:
            return bar, None
        start = bar_start(moment, interval)
        finished = self._open.pop(key).candle if bar is not None else None
        fresh = Candle(symbol, interval, start, price, price, price, price, ZERO, 0)
        self._open[key] = _OpenBar.of(fresh, moment, moment)
        return self._open[key], finished

    def close_through(self, moment: datetime) -> tuple[Candle, ...]:
        """Close every open bar that ends at or before ``moment``.

        Afterwards a trade older than the finest bar holding ``moment`` is late. Drive it from a
        clock tick (minus any grace the feed's latency needs) so quiet symbols close their bars.
        """
        require_utc(moment, field="moment")
        boundary = bar_start(moment, self.intervals[0])
        if self._closed_through is None or boundary > self._closed_through:
            self._closed_through = boundary
        done = [key for key, bar in self._open.items() if bar.end <= moment]
        return tuple(self._open.pop(key).candle for key in done)

    def resume(self, bar: Candle) -> None:
        """Take back a bar a previous process left open (read from storage), before any apply.

        Later trades fold into it: its open stays, any trade at or after its start becomes its
        close. A resumed bar of the finest interval also resumes late detection from its start.
        """
        key = (bar.symbol, bar.interval)
        if bar.interval not in self.intervals:
            raise ValueError(f"{bar.interval.value} is not aggregated here")
        if key in self._open:
            raise ValueError(f"a {bar.interval.value} bar of {bar.symbol} is already open")
        self._open[key] = _OpenBar.of(bar, bar.start, bar.start)
        if bar.interval is self.intervals[0]:
            self._floor[bar.symbol] = max(self._floor_of(bar.symbol), bar.start)

    def open_bars(self) -> tuple[Candle, ...]:
        """Every bar still open, e.g. to show the forming bar of a chart."""
        return tuple(bar.candle for bar in self._open.values())

    def _floor_of(self, symbol: str) -> datetime:
        own = self._floor.get(symbol, EPOCH)
        shared = self._closed_through or EPOCH
        return max(own, shared)

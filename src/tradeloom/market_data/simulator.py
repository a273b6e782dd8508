"""A seeded, deterministic simulated exchange: quotes and trades for a universe of instruments.

Each step picks a symbol, moves its mid price by one step of geometric Brownian motion, and
emits a :class:`Quote` (bid/ask a few ticks apart, on the tick grid) and, now and then, a
:class:`Trade` at the bid or the ask. Same seed, universe and settings → the same ticks, in
the same order, with the same prices; timestamps come from the injected clock.

The random walk is a float *model*; prices leave it as whole numbers of ticks and become
``Decimal`` multiples of the tick size, so every emitted price and size is exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

from tradeloom.domain.market import Instrument
from tradeloom.domain.time import Clock

SECONDS_PER_TRADING_YEAR = 252 * 6.5 * 3600


@dataclass(frozen=True, slots=True)
class Quote:
    """Top of book after a change: the best bid and offer with their sizes."""

    symbol: str
    bid: Decimal
    bid_size: Decimal
    ask: Decimal
    ask_size: Decimal
    time: datetime
    venue: str


@dataclass(frozen=True, slots=True)
class Trade:
    """One print: ``size`` traded at ``price``."""

    symbol: str
    price: Decimal
    size: Decimal
    time: datetime
    venue: str


Tick: TypeAlias = Quote | Trade


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    """How the simulated market behaves.

    ``drift`` and ``volatility`` are annual (GBM mu and sigma). ``rate`` is ticks per second over
    the whole universe; it sets the model's time step, not the wall-clock pace (see
    :func:`tradeloom.market_data.exchange.pump`).
    """

    seed: int = 42
    rate: float = 1000.0
    drift: float = 0.05
    volatility: float = 0.30
    trade_probability: float = 0.3
    max_spread_ticks: int = 3


class _Book:
    """The simulator's state of one instrument: its mid price in (fractional) ticks."""

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.mid_ticks = float(instrument.reference_price / instrument.tick_size)


class Simulator:
    """Produces an endless, deterministic stream of ticks (see the module docstring)."""

    def __init__(
        self, universe: Sequence[Instrument], clock: Clock, settings: SimulationSettings
    ) -> None:
        if not universe:
            raise ValueError("the simulator needs at least one instrument")
        if settings.rate <= 0:
            raise ValueError("rate must be positive")
        self._books = [_Book(instrument) for instrument in universe]
        self._clock = clock
        self._settings = settings
        self._random = random.Random(settings.seed)
        step_seconds = len(universe) / settings.rate
        self._dt = step_seconds / SECONDS_PER_TRADING_YEAR

    @property
    def instruments(self) -> tuple[Instrument, ...]:
        return tuple(book.instrument for book in self._books)

    def ticks(self) -> Iterator[Tick]:
        """Endless ticks; take as many as needed (``itertools.islice``)."""
        while True:
            yield from self.step()

    def step(self) -> list[Tick]:
        """One market event: a quote, possibly followed by a trade of the same symbol."""
        book = self._random.choice(self._books)
        self._move(book)
        quote = self._quote(book)
        if self._random.random() >= self._settings.trade_probability:
            return [quote]
        return [quote, self._trade(book, quote)]

    def _move(self, book: _Book) -> None:
        mu, sigma, dt = self._settings.drift, self._settings.volatility, self._dt
        shock = self._random.gauss(0.0, 1.0)
        book.mid_ticks *= math.exp((mu - sigma * sigma / 2) * dt + sigma * math.sqrt(dt) * shock)
        book.mid_ticks = max(book.mid_ticks, float(self._settings.max_spread_ticks + 1))

    def _quote(self, book: _Book) -> Quote:
        instrument = book.instrument
        spread = self._random.randint(1, self._settings.max_spread_ticks)
        bid_ticks = max(1, round(book.mid_ticks - spread / 2))
        return Quote(
            symbol=instrument.symbol,
            bid=bid_ticks * instrument.tick_size,
            bid_size=self._size(instrument),
            ask=(bid_ticks + spread) * instrument.tick_size,
            ask_size=self._size(instrument),
            time=self._clock.now(),
            venue=instrument.venue,
        )

    def _trade(self, book: _Book, quote: Quote) -> Trade:
        buyer_lifts_offer = self._random.random() < 0.5
        return Trade(
            symbol=quote.symbol,
            price=quote.ask if buyer_lifts_offer else quote.bid,
            size=self._size(book.instrument),
            time=quote.time,
            venue=quote.venue,
        )

    def _size(self, instrument: Instrument) -> Decimal:
        """A size in round lots of 100 shares (1 to 10 of them), on the lot grid."""
        return self._random.randint(1, 10) * 100 * instrument.lot_size

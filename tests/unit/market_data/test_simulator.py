"""The simulated exchange is deterministic and emits exact, on-grid, sane prices."""

from __future__ import annotations

import io
from collections import Counter
from decimal import Decimal

import pytest

from tests.unit.market_data.helpers import T0, ticks
from tradeloom.domain.numbers import is_multiple_of
from tradeloom.market_data.simulator import Quote, Trade
from tradeloom.market_data.universe import default_universe, parse_universe


def test_the_same_seed_gives_the_same_ticks_and_another_seed_does_not() -> None:
    assert ticks(2000, seed=1) == ticks(2000, seed=1)
    assert ticks(200, seed=1) != ticks(200, seed=2)


def test_quotes_and_trades_are_exact_on_the_tick_and_lot_grids() -> None:
    universe = {instrument.symbol: instrument for instrument in default_universe()}
    produced = ticks(5000)
    kinds = Counter(type(tick) for tick in produced)
    assert kinds[Quote] > kinds[Trade] > 0
    last_quote: dict[str, Quote] = {}
    for tick in produced:
        instrument = universe[tick.symbol]
        assert tick.time == T0
        if isinstance(tick, Quote):
            assert 0 < tick.bid < tick.ask <= tick.bid + 3 * instrument.tick_size
            assert is_multiple_of(tick.bid, instrument.tick_size)
            assert is_multiple_of(tick.ask_size, instrument.lot_size)
            last_quote[tick.symbol] = tick
        else:
            assert isinstance(tick.price, Decimal)
            assert tick.price in (last_quote[tick.symbol].bid, last_quote[tick.symbol].ask)
            assert is_multiple_of(tick.size, instrument.lot_size)


def test_prices_wander_but_stay_near_their_reference_over_a_short_run() -> None:
    reference = {i.symbol: i.reference_price for i in default_universe()}
    for tick in ticks(5000):
        if isinstance(tick, Quote):
            assert abs(tick.bid / reference[tick.symbol] - 1) < Decimal("0.05")


def test_the_default_universe_has_fifty_cent_tick_instruments() -> None:
    universe = default_universe()
    assert len(universe) == 50
    assert len({i.symbol for i in universe}) == 50
    assert {i.tick_size for i in universe} == {Decimal("0.01")}


def test_a_universe_loads_from_csv_and_bad_rows_name_their_line() -> None:
    text = (
        "symbol,tick_size,lot_size,reference_price,venue\n"
        "AAPL,0.01,1,187.20,XNAS\n"
        "ES,0.25,1,5000,\n"
    )
    aapl, es = parse_universe(io.StringIO(text))
    assert (aapl.venue, es.tick_size, es.venue) == ("XNAS", Decimal("0.25"), "SIMX")
    with pytest.raises(ValueError, match="line 3"):
        parse_universe(
            io.StringIO("symbol,tick_size,lot_size,reference_price\nA,0.01,1,1\nB,x,1,1\n")
        )

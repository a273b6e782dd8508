"""Candles: UTC alignment, OHLCV invariants, roll-up consistency, late updates and gaps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeloom.domain.errors import InvalidNumber, NaiveTimestamp
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import (
    Candle,
    CandleAggregator,
    Instrument,
    Interval,
    InvalidInstrument,
    bar_start,
    roll_up,
)

T0 = datetime(2026, 1, 5, 14, 0, tzinfo=UTC)


def trade(symbol: str, at: datetime, price: str, volume: str = "100") -> PriceUpdate:
    return PriceUpdate(
        symbol=symbol,
        bid=None,
        ask=None,
        last=Decimal(price),
        volume=Decimal(volume),
        exchange_time=at,
        venue="TEST",
    )


def quote(symbol: str, at: datetime) -> PriceUpdate:
    return PriceUpdate(
        symbol=symbol,
        bid=Decimal("9.99"),
        ask=Decimal("10.01"),
        last=None,
        volume=Decimal(0),
        exchange_time=at,
        venue="TEST",
    )


def all_bars(
    aggregator: CandleAggregator, interval: Interval, closed: list[Candle]
) -> list[Candle]:
    bars = [c for c in closed + list(aggregator.open_bars()) if c.interval is interval]
    return sorted(bars, key=lambda c: (c.symbol, c.start))


def run(updates: list[PriceUpdate]) -> tuple[CandleAggregator, list[Candle]]:
    aggregator = CandleAggregator()
    closed: list[Candle] = []
    for update in updates:
        closed.extend(aggregator.apply(update).closed)
    return aggregator, closed


# --- instruments and intervals ---------------------------------------------------------------


def test_an_instrument_keeps_exact_terms_and_refuses_non_positive_ones() -> None:
    aapl = Instrument("AAPL", Decimal("0.01"), Decimal(1), Decimal("187.20"))
    assert aapl.tick_size == Decimal("0.01")
    assert aapl.venue == "SIMX"
    with pytest.raises(InvalidInstrument, match="tick_size must be positive"):
        Instrument("AAPL", Decimal(0), Decimal(1), Decimal(1))
    with pytest.raises(InvalidNumber):
        Instrument("AAPL", Decimal("NaN"), Decimal(1), Decimal(1))
    with pytest.raises(InvalidInstrument, match="symbol"):
        Instrument(" ", Decimal("0.01"), Decimal(1), Decimal(1))


def test_intervals_parse_from_their_names() -> None:
    assert Interval.parse("5m") is Interval.M5
    assert Interval.H1.length == timedelta(hours=1)
    with pytest.raises(ValueError, match="expected one of 1m, 5m, 1h"):
        Interval.parse("2m")


@pytest.mark.parametrize(
    ("moment", "interval", "start"),
    [
        (datetime(2026, 1, 5, 14, 37, 59, 999999, tzinfo=UTC), Interval.M1, "14:37"),
        (datetime(2026, 1, 5, 14, 37, 0, tzinfo=UTC), Interval.M5, "14:35"),
        (datetime(2026, 1, 5, 14, 40, 0, tzinfo=UTC), Interval.M5, "14:40"),
        (datetime(2026, 1, 5, 14, 59, 59, tzinfo=UTC), Interval.H1, "14:00"),
    ],
)
def test_bars_start_on_utc_boundaries(moment: datetime, interval: Interval, start: str) -> None:
    assert bar_start(moment, interval).strftime("%H:%M:%S.%f") == f"{start}:00.000000"


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001 (hypothesis bounds are naive)
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    st.sampled_from(list(Interval)),
)
def test_every_moment_lies_in_exactly_one_aligned_bar(moment: datetime, interval: Interval) -> None:
    start = bar_start(moment, interval)
    assert start <= moment < start + interval.length
    assert (start - datetime(1970, 1, 1, tzinfo=UTC)) % interval.length == timedelta(0)
    assert start.tzinfo is UTC


def test_a_bar_start_needs_an_aware_utc_moment() -> None:
    with pytest.raises(NaiveTimestamp):
        bar_start(datetime(2026, 1, 5, 14, 0), Interval.M1)  # noqa: DTZ001
    with pytest.raises(NaiveTimestamp):
        bar_start(datetime(2026, 1, 5, 14, 0, tzinfo=timezone(timedelta(hours=1))), Interval.M1)


# --- aggregation rules -----------------------------------------------------------------------


def test_quotes_without_a_trade_price_change_no_candle() -> None:
    aggregator = CandleAggregator()
    assert aggregator.apply(quote("AAPL", T0)).updated == ()
    assert aggregator.open_bars() == ()


def test_a_trade_for_a_later_minute_closes_the_open_bar() -> None:
    aggregator = CandleAggregator(intervals=[Interval.M1])
    aggregator.apply(trade("AAPL", T0 + timedelta(seconds=5), "10.00", "100"))
    aggregator.apply(trade("AAPL", T0 + timedelta(seconds=20), "10.50", "50"))
    changes = aggregator.apply(trade("AAPL", T0 + timedelta(minutes=1), "10.20", "10"))
    assert changes.closed == (
        Candle("AAPL", Interval.M1, T0, Decimal("10.00"), Decimal("10.50"), Decimal("10.00"),
               Decimal("10.50"), Decimal(150), 2),
    )  # fmt: skip
    assert [c.start for c in changes.updated] == [T0 + timedelta(minutes=1)]


def test_a_minute_without_trades_produces_no_bar_at_all() -> None:
    aggregator, closed = run(
        [
            trade("AAPL", T0 + timedelta(seconds=30), "10.00"),
            quote("AAPL", T0 + timedelta(minutes=1, seconds=30)),  # quotes alone make no bar
            trade("AAPL", T0 + timedelta(minutes=2, seconds=10), "10.40"),
        ]
    )
    starts = [c.start for c in all_bars(aggregator, Interval.M1, closed)]
    assert starts == [T0, T0 + timedelta(minutes=2)]  # 14:01 is a gap, not a flat bar


def test_a_late_trade_inside_the_open_bar_updates_it_including_its_open() -> None:
    aggregator = CandleAggregator(intervals=[Interval.M1])
    aggregator.apply(trade("AAPL", T0 + timedelta(seconds=30), "10.00", "100"))
    changes = aggregator.apply(trade("AAPL", T0 + timedelta(seconds=10), "9.50", "20"))
    (bar,) = changes.updated
    assert (bar.open, bar.low, bar.close, bar.volume, bar.trades) == (
        Decimal("9.50"), Decimal("9.50"), Decimal("10.00"), Decimal(120), 2
    )  # fmt: skip
    assert aggregator.late == 0


def test_a_trade_older_than_the_open_bar_is_counted_late_and_ignored() -> None:
    aggregator = CandleAggregator()
    aggregator.apply(trade("AAPL", T0 + timedelta(minutes=1, seconds=5), "10.00"))
    changes = aggregator.apply(trade("AAPL", T0 + timedelta(seconds=59), "99.00"))
    assert changes.late
    assert changes.updated == ()
    assert aggregator.late == 1
    assert all(bar.high == Decimal("10.00") for bar in aggregator.open_bars())


def test_close_through_closes_quiet_symbols_and_makes_older_trades_late() -> None:
    aggregator = CandleAggregator()
    aggregator.apply(trade("AAPL", T0 + timedelta(seconds=5), "10.00"))
    aggregator.apply(trade("MSFT", T0 + timedelta(minutes=3), "20.00"))
    closed = aggregator.close_through(T0 + timedelta(minutes=1))
    assert [(c.symbol, c.interval) for c in closed] == [("AAPL", Interval.M1)]
    assert aggregator.apply(trade("AAPL", T0 + timedelta(seconds=50), "11.00")).late
    everything = aggregator.close_through(T0 + timedelta(hours=1))
    assert {(c.symbol, c.interval) for c in everything} == {
        (s, i) for s in ("AAPL", "MSFT") for i in Interval
    } - {("AAPL", Interval.M1)}


def test_a_resumed_bar_keeps_its_open_and_takes_later_trades() -> None:
    aggregator = CandleAggregator(intervals=[Interval.M1])
    left_open = Candle(
        "AAPL", Interval.M1, T0, Decimal(10), Decimal(12), Decimal(9), Decimal(11), Decimal(500), 5
    )
    aggregator.resume(left_open)
    (bar,) = aggregator.apply(trade("AAPL", T0 + timedelta(seconds=1), "13.00", "100")).updated
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades) == (
        Decimal(10), Decimal(13), Decimal(9), Decimal(13), Decimal(600), 6
    )  # fmt: skip
    assert aggregator.apply(trade("AAPL", T0 - timedelta(seconds=1), "1.00")).late
    with pytest.raises(ValueError, match="already open"):
        aggregator.resume(left_open)


def test_trades_with_the_same_time_keep_arrival_order_for_open_and_close() -> None:
    aggregator = CandleAggregator(intervals=[Interval.M1])
    for price in ("10.00", "12.00", "9.00", "11.00"):
        aggregator.apply(trade("AAPL", T0, price))
    (bar,) = aggregator.open_bars()
    assert (bar.open, bar.high, bar.low, bar.close) == tuple(
        Decimal(p) for p in ("10.00", "12.00", "9.00", "11.00")
    )


def test_roll_up_refuses_intervals_that_do_not_divide() -> None:
    bar = Candle(
        "A", Interval.H1, T0, Decimal(1), Decimal(1), Decimal(1), Decimal(1), Decimal(1), 1
    )
    with pytest.raises(ValueError, match="cannot roll 1h bars into 5m"):
        roll_up([bar], Interval.M5)


# --- properties ------------------------------------------------------------------------------

trades_strategy = st.lists(
    st.tuples(
        st.sampled_from(["AAPL", "MSFT", "KO"]),
        st.integers(0, 3 * 3600 * 1000),  # milliseconds over three hours
        st.integers(1, 100_000),  # price in cents
        st.integers(0, 10_000),  # volume
    ),
    min_size=1,
    max_size=200,
)


def to_updates(raw: list[tuple[str, int, int, int]]) -> list[PriceUpdate]:
    return [
        trade(symbol, T0 + timedelta(milliseconds=ms), str(Decimal(cents) / 100), str(volume))
        for symbol, ms, cents, volume in raw
    ]


@settings(max_examples=150, deadline=None)
@given(trades_strategy)
def test_in_order_trades_make_consistent_candles(raw: list[tuple[str, int, int, int]]) -> None:
    updates = sorted(to_updates(raw), key=lambda u: u.exchange_time)
    aggregator, closed = run(updates)
    assert aggregator.late == 0
    one_minute = all_bars(aggregator, Interval.M1, closed)
    for interval in Interval:
        bars = all_bars(aggregator, interval, closed)
        for bar in bars:
            assert bar.low <= bar.open <= bar.high
            assert bar.low <= bar.close <= bar.high
            assert bar.start == bar_start(bar.start, interval)
        for symbol in {u.symbol for u in updates}:
            expected = sum((u.volume for u in updates if u.symbol == symbol), Decimal(0))
            assert sum((b.volume for b in bars if b.symbol == symbol), Decimal(0)) == expected
        assert bars == roll_up(one_minute, interval), f"{interval.value} != roll-up of 1m bars"


@settings(max_examples=150, deadline=None)
@given(trades_strategy, st.randoms(use_true_random=False))
def test_out_of_order_trades_still_roll_up_exactly(
    raw: list[tuple[str, int, int, int]], shuffler: random.Random
) -> None:
    updates = to_updates(raw)
    shuffler.shuffle(updates)
    aggregator = CandleAggregator()
    closed: list[Candle] = []
    accepted: list[PriceUpdate] = []
    for update in updates:
        changes = aggregator.apply(update)
        closed.extend(changes.closed)
        if not changes.late:
            accepted.append(update)
    assert aggregator.late == len(updates) - len(accepted)
    one_minute = all_bars(aggregator, Interval.M1, closed)
    assert sum((b.volume for b in one_minute), Decimal(0)) == sum(
        (u.volume for u in accepted), Decimal(0)
    )
    for interval in (Interval.M5, Interval.H1):
        assert all_bars(aggregator, interval, closed) == roll_up(one_minute, interval)
    for bar in one_minute:
        inside = [
            u for u in accepted if u.symbol == bar.symbol and bar.start <= u.exchange_time < bar.end
        ]
        first = min(inside, key=lambda u: u.exchange_time)  # min/max keep the first of equals
        assert bar.open == first.last
        assert bar.trades == len(inside)

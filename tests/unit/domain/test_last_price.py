"""The newest update per symbol wins; an older one never overwrites it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.last_price import is_newer, newest_per_symbol

T0 = datetime(2026, 1, 5, 14, 0, tzinfo=UTC)


def update(symbol: str, seconds: int, bid: str = "10.00") -> PriceUpdate:
    return PriceUpdate(
        symbol=symbol,
        bid=Decimal(bid),
        ask=None,
        last=None,
        volume=Decimal(0),
        exchange_time=T0 + timedelta(seconds=seconds),
        venue="TEST",
    )


def test_is_newer_by_exchange_time_with_ties_going_to_the_later_arrival() -> None:
    assert is_newer(update("A", 1), None)
    assert is_newer(update("A", 2), update("A", 1))
    assert is_newer(update("A", 1, "10.01"), update("A", 1))
    assert not is_newer(update("A", 0), update("A", 1))


def test_symbols_are_judged_independently() -> None:
    newest = newest_per_symbol([update("A", 10), update("B", 1), update("A", 9)])
    assert {symbol: u.exchange_time for symbol, u in newest.items()} == {
        "A": T0 + timedelta(seconds=10),
        "B": T0 + timedelta(seconds=1),
    }


@given(
    st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 50)), max_size=100),
    st.randoms(use_true_random=False),
)
def test_an_older_update_never_wins_whatever_the_arrival_order(
    raw: list[tuple[str, int]], shuffler: random.Random
) -> None:
    updates = [update(symbol, seconds) for symbol, seconds in raw]
    shuffler.shuffle(updates)
    for symbol, kept in newest_per_symbol(updates).items():
        newest = max(u.exchange_time for u in updates if u.symbol == symbol)
        assert kept.exchange_time == newest
        ties = [u for u in updates if u.symbol == symbol and u.exchange_time == newest]
        assert kept is ties[-1]

"""The newest update per symbol wins; an older one never overwrites it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.last_price import LastPriceGuard, is_newer

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


def test_symbols_are_guarded_independently() -> None:
    guard = LastPriceGuard()
    assert guard.admit(update("A", 10))
    assert guard.admit(update("B", 1))
    assert not guard.admit(update("A", 9))
    assert guard.stale == 1
    assert guard.newest("A") == T0 + timedelta(seconds=10)


@given(
    st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 50)), max_size=100),
    st.randoms(use_true_random=False),
)
def test_an_older_update_never_wins_whatever_the_arrival_order(
    raw: list[tuple[str, int]], shuffler: random.Random
) -> None:
    updates = [update(symbol, seconds) for symbol, seconds in raw]
    shuffler.shuffle(updates)
    guard = LastPriceGuard()
    last_price: dict[str, PriceUpdate] = {}
    for incoming in updates:
        if guard.admit(incoming):
            assert is_newer(incoming, last_price.get(incoming.symbol))
            last_price[incoming.symbol] = incoming
    for symbol, kept in last_price.items():
        newest = max(u.exchange_time for u in updates if u.symbol == symbol)
        assert kept.exchange_time == newest
    assert guard.stale == len(updates) - sum(
        1 for i, u in enumerate(updates)
        if all(u.exchange_time >= v.exchange_time for v in updates[:i] if v.symbol == u.symbol)
    )  # fmt: skip

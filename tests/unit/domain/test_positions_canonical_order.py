"""The canonical order of fills: a position is the fold of its distinct fills by
(filled_at, fill_id), whatever order and however often they are delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.positions.reference import deliveries, distinct_fills, reference
from tradeloom.domain.errors import NaiveTimestamp
from tradeloom.domain.orders import Side
from tradeloom.domain.positions import (
    Fill,
    Position,
    PositionBook,
    canonical_order,
    cash_after,
    fold_position,
    mark_price,
    replay,
)

D = Decimal
T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
BUY, SELL = Side.BUY, Side.SELL


def fill(fill_id: str, side: Side, quantity: str, price: str, minute: int) -> Fill:
    return Fill(
        fill_id,
        "acc-1",
        "AAPL",
        side,
        D(quantity),
        D(price),
        filled_at=T0 + timedelta(minutes=minute),
    )


def test_a_late_older_fill_refolds_the_position() -> None:
    early, between, late = (
        fill("a", BUY, "100", "10", 1),
        fill("b", BUY, "100", "14", 2),
        fill("c", SELL, "100", "12", 3),
    )
    book = PositionBook()
    book.apply(early)
    after_two = book.apply(late)
    assert after_two is not None
    assert (after_two.quantity, after_two.realized_pnl) == (D(0), D(200))
    refolded = book.apply(between)
    # buy 100 @ 10, buy 100 @ 14 (average 12), sell 100 @ 12: nothing realized
    assert refolded == Position("acc-1", "AAPL", D(100), D(1200), D(0))
    assert [f.fill_id for f in book.fills("acc-1", "AAPL")] == ["a", "b", "c"]
    assert refolded == fold_position("acc-1", "AAPL", [late, between, early])
    assert book.cash("acc-1") == -1000 - 1400 + 1200


def test_fills_at_the_same_time_are_ordered_by_fill_id() -> None:
    second, first = fill("f-2", SELL, "10", "12", 0), fill("f-1", BUY, "10", "10", 0)
    assert canonical_order([second, first]) == [first, second]
    assert replay([second, first]).position("acc-1", "AAPL").realized_pnl == 20
    untimed = Fill("z", "acc-1", "AAPL", BUY, D(1), D(1))
    assert canonical_order([first, untimed])[0] is untimed  # no time: the epoch


def test_fold_position_refuses_another_positions_fill() -> None:
    other = Fill("x", "acc-2", "AAPL", BUY, D(1), D(1))
    with pytest.raises(ValueError, match="acc-1/AAPL"):
        fold_position("acc-1", "AAPL", [other])


def test_a_fill_time_must_be_utc() -> None:
    with pytest.raises(NaiveTimestamp):
        Fill("x", "a", "S", BUY, D(1), D(1), filled_at=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(NaiveTimestamp):
        Fill("x", "a", "S", BUY, D(1), D(1), filled_at=T0.astimezone(timezone(timedelta(hours=1))))


def test_cash_moves_by_the_exact_sum_of_the_deltas() -> None:
    fills = [fill("a", BUY, "3", "0.3333", 0), fill("b", SELL, "1", "12345678901234567890.5", 1)]
    assert cash_after(D("0.01"), fills) == D("0.01") - D("0.9999") + D("12345678901234567890.5")


@pytest.mark.parametrize(
    ("bid", "ask", "last", "mark"),
    [
        ("10", "10.5", "9", "10.25"),
        (None, "10.5", "9", "9"),
        ("10", None, None, None),
        (None, None, None, None),
        ("0", "10", "9.5", "9.5"),
        (None, None, "0", None),
    ],
)
def test_the_mark_is_the_mid_else_the_last_trade(
    bid: str | None, ask: str | None, last: str | None, mark: str | None
) -> None:
    def number(text: str | None) -> Decimal | None:
        return None if text is None else D(text)

    assert mark_price(number(bid), number(ask), number(last)) == number(mark)


ACCOUNTS, SYMBOLS = ("acc-1", "acc-2"), ("AAPL", "MSFT")


@settings(max_examples=300, deadline=None)
@given(data=st.data(), fills=distinct_fills(ACCOUNTS, SYMBOLS, max_size=30))
def test_any_delivery_with_redeliveries_gives_the_reference_positions_and_cash(
    data: st.DataObject, fills: list[Fill]
) -> None:
    book = replay(data.draw(deliveries(fills)))
    expected, cash = reference(fills)
    for account in ACCOUNTS:
        assert book.cash(account) == cash.get(account, 0)
    for (account, symbol), ref in expected.items():
        p = book.position(account, symbol)
        assert (p.quantity, p.cost_basis, p.realized_pnl, p.fees) == (
            ref.quantity,
            ref.basis,
            ref.realized,
            ref.fees,
        ), f"{account}/{symbol}"
        applied = book.fills(account, symbol)
        assert (len(applied), applied[-1].fill_id) == (ref.fill_count, ref.last_fill_id)
    traded = {(p.account_id, p.symbol) for a in ACCOUNTS for p in book.positions(a)}
    assert traded == set(expected)

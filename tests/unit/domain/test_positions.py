"""Positions and P&L by the average-cost method: hand-worked examples and properties.

The properties compare the book with a reference written independently in exact fractions
(``fractions.Fraction``: the average cost is never rounded there), over fills delivered with
random redeliveries of fills already seen, at any later point.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeloom.domain.errors import InvalidNumber
from tradeloom.domain.events import OrderAccepted, OrderPartiallyFilled, new_event
from tradeloom.domain.orders import Side
from tradeloom.domain.positions import (
    COST_QUANTUM,
    ConflictingFill,
    Fill,
    InvalidFill,
    Position,
    PositionBook,
    apply_fill,
    cash_delta,
    fill_from_event,
    market_value,
    replay,
    total_pnl,
    unrealized_pnl,
)

D = Decimal
BUY, SELL = Side.BUY, Side.SELL
FLAT = Position("acc-1", "AAPL")


def fold(*fills: tuple[Side, str, str] | tuple[Side, str, str, str]) -> list[Position]:
    """Every position along the way from flat through ``(side, quantity, price[, fee])``."""
    positions = [FLAT]
    for side, quantity, price, *fee in fills:
        positions.append(
            apply_fill(positions[-1], side, D(quantity), D(price), D(fee[0] if fee else "0"))
        )
    return positions[1:]


def n(*values: int | str | Decimal | None) -> tuple[Decimal | None, ...]:
    """Expected numbers as Decimals (None stays None)."""
    return tuple(None if v is None else D(v) for v in values)


# --- hand-worked examples -------------------------------------------------------------------


def test_the_worked_example_adds_reduces_flips_and_closes() -> None:
    p1, p2, p3, p4, p5 = fold(
        (BUY, "100", "10"),
        (BUY, "100", "12"),
        (SELL, "150", "13"),
        (SELL, "100", "9"),
        (BUY, "50", "8"),
    )
    assert (p1.quantity, p1.average_cost, p1.realized_pnl) == n(100, 10, 0)
    # adding in the same direction: the quantity-weighted average
    assert (p2.quantity, p2.average_cost, p2.cost_basis, p2.realized_pnl) == n(200, 11, 2200, 0)
    # reducing: (13 - 11) * 150 realized, the average cost of the rest unchanged
    assert (p3.quantity, p3.average_cost, p3.realized_pnl) == n(50, 11, 300)
    # crossing zero: (9 - 11) * 50 = -100 on the 50 closed, the other 50 open short at 9
    assert (p4.quantity, p4.average_cost, p4.cost_basis, p4.realized_pnl) == n(-50, 9, -450, 200)
    # closing the short: (9 - 8) * 50 = +50, flat
    assert (p5.quantity, p5.average_cost, p5.cost_basis, p5.realized_pnl) == n(0, None, 0, 250)
    assert p5.is_flat
    assert p5.fees == 0


def test_the_worked_example_cash_equals_the_realized_pnl_once_flat() -> None:
    deltas = [
        cash_delta(BUY, D(100), D(10)),
        cash_delta(BUY, D(100), D(12)),
        cash_delta(SELL, D(150), D(13)),
        cash_delta(SELL, D(100), D(9)),
        cash_delta(BUY, D(50), D(8)),
    ]
    assert deltas == [-1000, -1200, 1950, 900, -400]
    assert sum(deltas) == 250


def test_fees_are_kept_apart_and_reduce_realized_pnl_when_paid() -> None:
    p1, p2, p3 = fold(
        (BUY, "100", "10", "1.50"),
        (SELL, "40", "12", "0.75"),
        (SELL, "60", "11", "0.25"),
    )
    # opening fee: not in the average cost, expensed at once
    assert (p1.average_cost, p1.fees, p1.realized_pnl, p1.gross_realized_pnl) == n(
        10,
        D("1.5"),
        D("-1.5"),
        0,
    )
    assert (p2.average_cost, p2.fees, p2.gross_realized_pnl) == n(10, D("2.25"), 80)
    assert p2.realized_pnl == D("77.75")
    assert (p3.fees, p3.gross_realized_pnl, p3.realized_pnl) == n(D("2.50"), 140, D("137.50"))
    # net realized of a closed position is its cash flow, fees included
    assert cash_delta(BUY, D(100), D(10), D("1.50")) == D("-1001.50")
    assert cash_delta(SELL, D(40), D(12), D("0.75")) == D("479.25")
    assert cash_delta(SELL, D(60), D(11), D("0.25")) == D("659.75")
    assert D("-1001.50") + D("479.25") + D("659.75") == p3.realized_pnl


def test_a_negative_fee_is_a_rebate() -> None:
    (p,) = fold((BUY, "10", "5", "-0.10"))
    assert (p.fees, p.realized_pnl) == (D("-0.10"), D("0.10"))
    assert cash_delta(BUY, D(10), D(5), D("-0.10")) == D("-49.90")


def test_a_short_from_flat_and_a_flip_back_to_long() -> None:
    p1, p2, p3, p4 = fold(
        (SELL, "10", "20"),
        (SELL, "30", "24"),
        (BUY, "20", "22"),
        (BUY, "30", "25"),
    )
    assert (p1.quantity, p1.average_cost, p1.cost_basis) == n(-10, 20, -200)
    assert (p2.quantity, p2.average_cost) == n(-40, 23)
    # a short gains when the price falls: (23 - 22) * 20
    assert (p3.quantity, p3.average_cost, p3.realized_pnl) == n(-20, 23, 20)
    # flip: (23 - 25) * 20 = -40 on the short, then long 10 at 25
    assert (p4.quantity, p4.average_cost, p4.realized_pnl) == n(10, 25, -20)


def test_unrealized_pnl_and_market_value_for_long_short_and_flat() -> None:
    (long,) = fold((BUY, "50", "11"))
    (short,) = fold((SELL, "50", "9"))
    assert (market_value(long, D(12)), unrealized_pnl(long, D(12))) == n(600, 50)
    assert (market_value(short, D(8)), unrealized_pnl(short, D(8))) == n(-400, 50)
    assert unrealized_pnl(short, D(10)) == -50
    assert (market_value(FLAT, D(99)), unrealized_pnl(FLAT, D(99))) == n(0, 0)
    assert total_pnl(long, D(12)) == 50


def test_a_non_terminating_share_of_the_cost_is_rounded_and_the_rest_kept() -> None:
    _, p2, p3 = fold((BUY, "1", "1"), (BUY, "2", "2"), (SELL, "1", "2"))
    assert p2.cost_basis == 5  # the average 5/3 does not terminate; the basis is exact
    # 5/3 of basis released, rounded half-even to the quantum
    assert p3.realized_pnl == D("0.333333333333")
    assert p3.cost_basis == D("3.333333333333")
    assert D("1e-12") == COST_QUANTUM
    # closing the rest releases exactly what is left: nothing is ever lost
    p4 = apply_fill(p3, SELL, D(2), D(2))
    assert p4.is_flat
    assert p4.realized_pnl == 1  # cash: -1 - 4 + 2 + 4


def test_apply_fill_is_pure() -> None:
    before = Position("acc-1", "AAPL", D(10), D(100))
    after = apply_fill(before, BUY, D(10), D(12))
    assert before == Position("acc-1", "AAPL", D(10), D(100))
    assert (after.account_id, after.symbol) == ("acc-1", "AAPL")
    assert after.quantity == 20
    with pytest.raises(AttributeError):
        after.quantity = D(1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("quantity", "price", "error"),
    [
        (D(0), D(1), InvalidFill),
        (D(-1), D(1), InvalidFill),
        (D(1), D(0), InvalidFill),
        (D(1), D(-2), InvalidFill),
        (D("NaN"), D(1), InvalidNumber),
        (D(1), D("Infinity"), InvalidNumber),
        (1.5, D(1), InvalidNumber),
    ],
)
def test_bad_fills_are_refused(quantity: Decimal, price: Decimal, error: type[Exception]) -> None:
    with pytest.raises(error):
        apply_fill(FLAT, BUY, quantity, price)
    with pytest.raises(error):
        cash_delta(BUY, quantity, price)


def test_a_flat_position_cannot_carry_a_cost_basis() -> None:
    with pytest.raises(InvalidNumber):
        Position("acc-1", "AAPL", D(0), D(5))
    with pytest.raises(InvalidNumber):
        Position("acc-1", "AAPL", 1.0)  # type: ignore[arg-type]


# --- the book: idempotency by fill id -------------------------------------------------------


def fill(fill_id: str, side: Side, quantity: str, price: str, **more: str) -> Fill:
    return Fill(
        fill_id=fill_id,
        account_id=more.get("account", "acc-1"),
        symbol=more.get("symbol", "AAPL"),
        side=side,
        quantity=D(quantity),
        price=D(price),
        fee=D(more.get("fee", "0")),
    )


def test_an_older_fill_redelivered_later_is_not_applied_again() -> None:
    """The trap: comparing with the last applied fill id only would apply f1 twice."""
    f1, f2, f3 = (
        fill("f1", BUY, "100", "10"),
        fill("f2", BUY, "100", "12"),
        fill("f3", SELL, "50", "13"),
    )
    book = PositionBook()
    assert book.apply(f1) is not None
    assert book.apply(f2) is not None
    assert book.apply(f3) is not None
    before = (book.position("acc-1", "AAPL"), book.cash("acc-1"))
    assert book.apply(f1) is None
    assert book.apply(f3) is None
    assert book.apply(f2) is None
    assert (book.position("acc-1", "AAPL"), book.cash("acc-1")) == before
    assert before[0].quantity == 150
    assert before[1] == -1000 - 1200 + 650
    assert book.has_applied("f1")
    assert not book.has_applied("f4")


def test_a_fill_id_coming_back_with_other_terms_is_refused() -> None:
    book = PositionBook()
    book.apply(fill("f1", BUY, "100", "10"))
    with pytest.raises(ConflictingFill):
        book.apply(fill("f1", BUY, "100", "10.01"))
    assert book.apply(fill("f1", BUY, "100.00", "10.0")) is None  # the same numbers


def test_the_book_keeps_accounts_and_symbols_apart_and_reports_equity() -> None:
    book = replay(
        [
            fill("f1", BUY, "10", "100", symbol="AAPL"),
            fill("f2", SELL, "5", "50", symbol="MSFT", fee="1"),
            fill("f3", BUY, "7", "3", account="acc-2"),
            fill("f1", BUY, "10", "100", symbol="AAPL"),
        ]
    )
    assert [p.symbol for p in book.positions("acc-1")] == ["AAPL", "MSFT"]
    assert [p.quantity for p in book.positions("acc-1")] == [10, -5]
    assert book.cash("acc-1") == -1000 + 249
    assert book.cash("acc-2") == -21
    assert book.cash("nobody") == 0
    assert book.position("acc-2", "AAPL").quantity == 7
    assert book.position("acc-2", "MSFT") == Position("acc-2", "MSFT")
    assert book.equity("acc-1", {"AAPL": D(110), "MSFT": D(40)}) == -751 + 1100 - 200
    with pytest.raises(KeyError):
        book.equity("acc-1", {"AAPL": D(110)})
    assert book.apply_all([fill("f3", BUY, "7", "3", account="acc-2")]) == 0


def test_a_fill_event_becomes_a_fill() -> None:
    now = datetime(2026, 11, 25, 14, 30, tzinfo=UTC)
    payload = OrderPartiallyFilled(
        order_id="o-1",
        fill_id="x-1",
        symbol="AAPL",
        side=SELL,
        quantity=D("4"),
        price=D("187.25"),
        fee=D("0.02"),
        filled_at=now,
        cumulative_quantity=D("4"),
        leaves_quantity=D("6"),
    )
    event = new_event(payload, occurred_at=now, correlation_id="c", account_id="acc-9")
    assert fill_from_event(event) == Fill(
        "x-1", "acc-9", "AAPL", SELL, D(4), D("187.25"), D("0.02"), filled_at=now, order_id="o-1"
    )
    with pytest.raises(InvalidFill):
        fill_from_event(new_event(payload, occurred_at=now, correlation_id="c"))
    accepted = OrderAccepted(order_id="o-1", broker_order_id="b-1")
    with pytest.raises(TypeError):
        fill_from_event(new_event(accepted, occurred_at=now, correlation_id="c", account_id="a"))


# --- properties -----------------------------------------------------------------------------


@dataclass
class RefPosition:
    quantity: Fraction = Fraction(0)
    average: Fraction | None = None
    realized: Fraction = Fraction(0)
    fees: Fraction = Fraction(0)


def reference(fills: list[Fill]) -> tuple[dict[tuple[str, str], RefPosition], dict[str, Fraction]]:
    """Average cost the textbook way, in exact fractions, over distinct fills in the order of
    their (filled_at, fill_id)."""
    positions: dict[tuple[str, str], RefPosition] = defaultdict(RefPosition)
    cash: dict[str, Fraction] = defaultdict(Fraction)
    for f in sorted(fills, key=lambda f: (f.filled_at, f.fill_id)):
        p = positions[(f.account_id, f.symbol)]
        q, price, fee = Fraction(f.quantity), Fraction(f.price), Fraction(f.fee)
        change = q if f.side is BUY else -q
        if p.quantity == 0 or (p.quantity > 0) == (change > 0):
            held = abs(p.quantity)
            p.average = ((p.average or Fraction(0)) * held + price * q) / (held + q)
            p.quantity += change
        else:
            assert p.average is not None
            closed = min(q, abs(p.quantity))
            sign = 1 if p.quantity > 0 else -1
            p.realized += sign * closed * (price - p.average)
            crossed = q > abs(p.quantity)
            p.quantity += change
            if p.quantity == 0:
                p.average = None
            elif crossed:
                p.average = price
        p.realized -= fee
        p.fees += fee
        cash[f.account_id] += -change * price - fee
    return positions, cash


ACCOUNTS = ("acc-1", "acc-2")
SYMBOLS = ("AAPL", "MSFT")
quantities = st.one_of(
    st.integers(1, 6).map(lambda n: D(25 * n)),  # round lots: exact closes and flips to flat
    st.decimals(min_value=D("0.01"), max_value=D("200"), places=2),
)
prices = st.decimals(min_value=D("0.0001"), max_value=D("5000"), places=4)
fees = st.one_of(st.just(D(0)), st.decimals(min_value=D("-0.50"), max_value=D("9.99"), places=2))
# A few distinct times, so fills often share one and their ids break the tie.
times = st.integers(0, 5).map(lambda minute: datetime(2026, 3, 2, 14, minute, tzinfo=UTC))


@st.composite
def distinct_fills(draw: st.DrawFn, max_size: int = 30) -> list[Fill]:
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(ACCOUNTS),
                st.sampled_from(SYMBOLS),
                st.sampled_from(Side),
                quantities,
                prices,
                fees,
                times,
            ),
            max_size=max_size,
        )
    )
    return [Fill(f"f{i}", *row) for i, row in enumerate(rows)]


@st.composite
def with_redeliveries(draw: st.DrawFn, fills: list[Fill]) -> list[Fill]:
    """``fills`` delivered in order, each followed by redeliveries of any fill already seen."""
    delivered: list[Fill] = []
    for i, f in enumerate(fills):
        delivered.append(f)
        delivered += draw(st.lists(st.sampled_from(fills[: i + 1]), max_size=3))
    return delivered


def fractional_bound(fills: list[Fill]) -> Fraction:
    """Each partial close may round its released cost by half a quantum."""
    return Fraction(COST_QUANTUM) * len(fills)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), fills=distinct_fills())
def test_redeliveries_anywhere_change_nothing_and_match_the_reference(
    data: st.DataObject, fills: list[Fill]
) -> None:
    delivery = data.draw(with_redeliveries(fills))
    book = replay(delivery)

    # Exactly the fold of apply_fill over the distinct fills, once each, in canonical order.
    once = PositionBook()
    for f in sorted(fills, key=lambda f: (f.filled_at, f.fill_id)):
        assert once.apply(f) is not None
    for account in ACCOUNTS:
        assert book.cash(account) == once.cash(account)
        assert book.positions(account) == once.positions(account)

    # And the independent reference in exact fractions.
    ref_positions, ref_cash = reference(fills)
    bound = fractional_bound(fills)
    for account in ACCOUNTS:
        assert Fraction(book.cash(account)) == ref_cash[account]
    for (account, symbol), ref in ref_positions.items():
        p = book.position(account, symbol)
        assert Fraction(p.quantity) == ref.quantity
        assert Fraction(p.fees) == ref.fees
        assert abs(Fraction(p.realized_pnl) - ref.realized) <= bound
        if ref.average is None:
            assert p.is_flat
            assert p.average_cost is None
            assert p.cost_basis == 0
        else:
            assert abs(Fraction(p.cost_basis) - ref.average * ref.quantity) <= bound


@settings(max_examples=100, deadline=None)
@given(fills=distinct_fills(), mark=prices)
def test_realized_plus_unrealized_is_the_cash_flow_marked_to_a_price_exactly(
    fills: list[Fill], mark: Decimal
) -> None:
    book = replay(fills)
    for account in ACCOUNTS:
        for symbol in SYMBOLS:
            own = [f for f in fills if (f.account_id, f.symbol) == (account, symbol)]
            p = book.position(account, symbol)
            signed = sum((f.quantity if f.side is BUY else -f.quantity for f in own), D(0))
            assert p.quantity == signed
            assert p.fees == sum((f.fee for f in own), D(0))
            cash_flow = sum((f.cash_delta for f in own), D(0))
            assert p.realized_pnl + unrealized_pnl(p, mark) == cash_flow + signed * mark
            assert total_pnl(p, mark) == cash_flow + market_value(p, mark)
            if p.is_flat:
                assert p.realized_pnl == cash_flow


@settings(max_examples=50, deadline=None)
@given(data=st.data(), fills=distinct_fills())
def test_interleaving_other_accounts_and_symbols_changes_nothing(
    data: st.DataObject, fills: list[Fill]
) -> None:
    """Delivery may interleave different (account, symbol) streams in any way."""
    order = data.draw(st.permutations(range(len(fills))))
    by_key: dict[tuple[str, str], list[Fill]] = defaultdict(list)
    for f in fills:
        by_key[(f.account_id, f.symbol)].append(f)
    # Slots of the permuted sequence take each key's fills in their own order.
    queues = {key: iter(group) for key, group in by_key.items()}
    interleaved = [next(queues[(fills[i].account_id, fills[i].symbol)]) for i in order]
    a, b = replay(fills), replay(interleaved)
    for account in ACCOUNTS:
        assert a.cash(account) == b.cash(account)
        assert a.positions(account) == b.positions(account)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), fills=distinct_fills(max_size=20), mark=prices)
def test_any_delivery_order_of_distinct_fills_gives_the_same_book(
    data: st.DataObject, fills: list[Fill], mark: Decimal
) -> None:
    """The book folds each position in canonical order, so delivery order does not matter."""
    shuffled = data.draw(st.permutations(fills))
    a, b = replay(fills), replay(shuffled)
    for account in ACCOUNTS:
        assert a.cash(account) == b.cash(account)
        assert a.positions(account) == b.positions(account)
        for symbol in SYMBOLS:
            pa, pb = a.position(account, symbol), b.position(account, symbol)
            assert total_pnl(pa, mark) == total_pnl(pb, mark)

"""Properties of the paper venue's matching, on the pure venue (no thread): whatever the
quotes, fills never overfill, cumulative and leaves quantities add up, fill ids are unique,
limits are respected, and an order ends at most once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tradeloom.broker.paper_venue import PaperVenue
from tradeloom.broker.reports import (
    BrokerAccepted,
    BrokerCanceled,
    BrokerExpired,
    BrokerFill,
    BrokerReport,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock

D = Decimal
START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)

cents = st.integers(min_value=9_900, max_value=10_100).map(lambda c: D(c) / 100)
quotes = st.lists(st.tuples(cents, st.integers(min_value=1, max_value=5)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    side=st.sampled_from(Side),
    quantity=st.integers(min_value=1, max_value=500),
    limit=cents,
    tif=st.sampled_from([TimeInForce.DAY, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK]),
    book=quotes,
)
def test_fills_add_up_and_respect_the_limit(
    side: Side, quantity: int, limit: Decimal, tif: TimeInForce, book: list[tuple[Decimal, int]]
) -> None:
    venue = PaperVenue(
        [Instrument("ACME", D("0.01"), D("1"), D("100"))],
        ManualClock(START),
        displayed_quantity=D(100),
    )
    reports: list[BrokerReport] = venue.on_price(_quote(D(100), 1))
    reports += venue.submit(
        SubmitOrder(
            order_id="o",
            account_id="a",
            symbol="ACME",
            side=side,
            order_type=OrderType.LIMIT,
            quantity=D(quantity),
            time_in_force=tif,
            limit_price=limit,
        )
    )
    for mid, spread in book:
        reports += venue.on_price(_quote(mid, spread))

    assert isinstance(reports[0], BrokerAccepted)
    fills = [r for r in reports if isinstance(r, BrokerFill)]
    assert len({f.fill_id for f in fills}) == len(fills)
    running = D(0)
    for fill in fills:
        running += fill.quantity
        assert fill.cumulative_quantity == running
        assert fill.leaves_quantity == D(quantity) - running
        assert fill.price <= limit if side is Side.BUY else fill.price >= limit
    assert running <= D(quantity)
    endings = [r for r in reports if isinstance(r, BrokerCanceled | BrokerExpired)]
    filled_whole = running == D(quantity)
    assert len(endings) <= 1
    assert not (endings and filled_whole)
    if tif is TimeInForce.FOK:
        assert running in (D(0), D(quantity))


def _quote(mid: Decimal, spread_ticks: int) -> PriceUpdate:
    half = D("0.01") * spread_ticks
    return PriceUpdate(
        symbol="ACME",
        bid=mid - half,
        ask=mid + half,
        last=None,
        volume=D(0),
        exchange_time=START,
        venue="SIMX",
    )

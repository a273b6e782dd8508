"""Paper broker rules beyond the shared contract: slippage, grids, sells, stop-limits, halts,
amend refusals, FOK that fills, fees, expiry, latency, and the thread it reports from."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tradeloom.broker.adapter import BrokerUnavailable
from tradeloom.broker.market_feed import BrokerPriceFeed
from tradeloom.broker.paper import PaperBroker
from tradeloom.broker.reports import (
    AmendRequest,
    BrokerAccepted,
    BrokerCanceled,
    BrokerCancelRejected,
    BrokerExpired,
    BrokerFill,
    BrokerRejected,
    BrokerReplaceRejected,
    BrokerReport,
    CancelRequest,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock
from tradeloom.market_data.consumer import PriceTick

D = Decimal
START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
ACME = Instrument("ACME", D("0.01"), D("10"), D("100"))


class Venue:
    def __init__(self, **options: Any) -> None:
        self.clock = ManualClock(START)
        self.broker = PaperBroker([ACME], self.clock, **options)
        self.reports: list[BrokerReport] = []
        self.threads: set[str] = set()
        self._seen = 0
        self._orders = 0

    def receive(self, report: BrokerReport) -> None:
        self.threads.add(threading.current_thread().name)
        self.reports.append(report)

    def quote(self, bid: str | None, ask: str | None, last: str | None = None) -> None:
        self.broker.on_price(
            PriceUpdate(
                symbol="ACME",
                bid=None if bid is None else D(bid),
                ask=None if ask is None else D(ask),
                last=None if last is None else D(last),
                volume=D(0),
                exchange_time=self.clock.now(),
                venue="SIMX",
            )
        )

    def submit(self, side: Side, order_type: OrderType, qty: str, **terms: Any) -> str:
        self._orders += 1
        order_id = f"o-{self._orders}"
        tif = terms.pop("tif", TimeInForce.DAY)
        self.broker.submit(
            SubmitOrder(
                order_id=order_id,
                account_id="acct",
                symbol=terms.pop("symbol", "ACME"),
                side=side,
                order_type=order_type,
                quantity=D(qty),
                time_in_force=tif,
                **{key: D(value) for key, value in terms.items()},
            )
        )
        return order_id

    def new(self) -> list[BrokerReport]:
        self.broker.drain()
        fresh, self._seen = self.reports[self._seen :], len(self.reports)
        return fresh


@pytest.fixture
def venue() -> Iterator[Venue]:
    subject = Venue(slippage_ticks=2, displayed_quantity=D(100), fee_per_unit=D("0.005"))
    subject.broker.start(subject.receive)
    yield subject
    subject.broker.stop()


def kinds(reports: list[BrokerReport]) -> tuple[type[BrokerReport], ...]:
    return tuple(type(report) for report in reports)


def test_market_sell_takes_the_bid_less_slippage_and_pays_the_fee(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    venue.submit(Side.SELL, OrderType.MARKET, "10")
    accepted, fill = venue.new()
    assert isinstance(accepted, BrokerAccepted)
    assert isinstance(fill, BrokerFill)
    assert (fill.price, fill.fee) == (D("99.96"), D("0.050"))
    assert venue.threads == {"paper-broker"}


def test_market_order_without_a_quote_is_rejected_no_market(venue: Venue) -> None:
    venue.submit(Side.BUY, OrderType.MARKET, "10")
    (rejected,) = venue.new()
    assert isinstance(rejected, BrokerRejected)
    assert rejected.code == "no_market"


@pytest.mark.parametrize(
    ("terms", "code"),
    [
        ({"qty": "15", "limit_price": "100.00"}, "quantity_off_lot"),
        ({"qty": "10", "limit_price": "100.005"}, "price_off_tick"),
        ({"qty": "10"}, "invalid_limit_price"),
    ],
)
def test_orders_off_the_grid_or_with_bad_terms_are_rejected(
    venue: Venue, terms: dict[str, str], code: str
) -> None:
    qty = terms.pop("qty")
    venue.submit(Side.BUY, OrderType.LIMIT, qty, **terms)
    (rejected,) = venue.new()
    assert isinstance(rejected, BrokerRejected)
    assert rejected.code == code


def test_a_reused_order_id_is_rejected(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    request = SubmitOrder(
        order_id="same",
        account_id="acct",
        symbol="ACME",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=D(10),
        time_in_force=TimeInForce.GTC,
        limit_price=D(90),
    )
    venue.broker.submit(request)
    venue.broker.submit(request)
    _accepted, rejected = venue.new()
    assert isinstance(rejected, BrokerRejected)
    assert rejected.code == "duplicate_order"


def test_stop_limit_triggers_then_rests_as_a_limit(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    venue.submit(Side.SELL, OrderType.STOP_LIMIT, "10", stop_price="99.00", limit_price="98.90")
    assert kinds(venue.new()) == (BrokerAccepted,)
    venue.quote("98.80", "98.85", last="98.99")  # triggers, but the bid is under the limit
    assert venue.new() == []
    venue.quote("98.95", "99.00")
    (fill,) = venue.new()
    assert isinstance(fill, BrokerFill)
    assert fill.price == D("98.95")


def test_a_halted_symbol_stops_matching_until_resumed(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    venue.submit(Side.BUY, OrderType.LIMIT, "10", limit_price="99.00")
    venue.broker.halt("ACME")
    venue.quote("98.90", "98.95")
    assert kinds(venue.new()) == (BrokerAccepted,)
    venue.broker.resume("ACME")
    venue.quote("98.90", "98.95")
    assert kinds(venue.new()) == (BrokerFill,)


def test_fok_that_can_fill_fills_whole(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    venue.submit(Side.BUY, OrderType.LIMIT, "100", limit_price="100.02", tif=TimeInForce.FOK)
    _accepted, fill = venue.new()
    assert isinstance(fill, BrokerFill)
    assert (fill.quantity, fill.leaves_quantity) == (D(100), D(0))


def test_ioc_that_cannot_trade_is_canceled_whole(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    venue.submit(Side.BUY, OrderType.LIMIT, "10", limit_price="99.00", tif=TimeInForce.IOC)
    assert kinds(venue.new()) == (BrokerAccepted, BrokerCanceled)


def test_amend_refusals_say_why(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    resting = venue.submit(Side.BUY, OrderType.LIMIT, "10", limit_price="99.00")
    filled = venue.submit(Side.BUY, OrderType.MARKET, "10")
    venue.new()
    for order_id, terms, why in [
        (resting, {"limit_price": D("99.001")}, "not a multiple"),
        (resting, {"quantity": D(0)}, "not above the filled"),
        (filled, {"quantity": D(20)}, "too late to amend"),
        ("nope", {"quantity": D(20)}, "unknown order"),
    ]:
        venue.broker.amend(AmendRequest(order_id=order_id, account_id="acct", **terms))
        (refused,) = venue.new()
        assert isinstance(refused, BrokerReplaceRejected)
        assert why in refused.reason


def test_another_accounts_order_cannot_be_canceled(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    order_id = venue.submit(Side.BUY, OrderType.LIMIT, "10", limit_price="99.00")
    venue.broker.cancel(CancelRequest(order_id=order_id, account_id="intruder"))
    _, refused = venue.new()
    assert isinstance(refused, BrokerCancelRejected)
    assert refused.reason == "unknown order"


def test_a_stopped_broker_refuses_requests() -> None:
    subject = Venue()
    with pytest.raises(BrokerUnavailable):
        subject.submit(Side.BUY, OrderType.MARKET, "10")


def test_day_orders_expire_on_an_explicit_check(venue: Venue) -> None:
    venue.quote("99.98", "100.02")
    venue.submit(Side.BUY, OrderType.LIMIT, "10", limit_price="99.00")
    venue.submit(Side.BUY, OrderType.LIMIT, "10", limit_price="99.00", tif=TimeInForce.GTC)
    venue.new()
    venue.clock.set(datetime(2026, 3, 2, 20, 59, 59, tzinfo=UTC))
    venue.broker.check_expiry()
    assert venue.new() == []
    venue.clock.set(datetime(2026, 3, 2, 21, 0, tzinfo=UTC))
    venue.broker.check_expiry()
    assert venue.new() == [BrokerExpired(order_id="o-1", account_id="acct")]


def test_requests_wait_out_the_latency_on_the_broker_thread() -> None:
    subject = Venue(latency=0.05)
    subject.broker.start(subject.receive)
    try:
        subject.quote("99.98", "100.02")
        began = time.monotonic()
        subject.submit(Side.BUY, OrderType.MARKET, "10")
        assert kinds(subject.new()) == (BrokerAccepted, BrokerFill)
        assert time.monotonic() - began >= 0.05
    finally:
        subject.broker.stop()


async def test_the_price_feed_observer_forwards_consumed_prices(venue: Venue) -> None:
    update = PriceUpdate(
        symbol="ACME",
        bid=D("99.98"),
        ask=D("100.02"),
        last=None,
        volume=D(0),
        exchange_time=START,
        venue="SIMX",
    )
    await BrokerPriceFeed(venue.broker).on_prices([PriceTick(update, START, "event-1")])
    venue.submit(Side.BUY, OrderType.MARKET, "10")
    assert kinds(venue.new()) == (BrokerAccepted, BrokerFill)

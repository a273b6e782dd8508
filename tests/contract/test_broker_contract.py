"""The ``BrokerAdapter`` contract: every adapter yields the same reports for the same session.

Each scenario runs on the paper broker and on the replay broker. For ``replay`` the scenario
first runs on a paper broker wrapped in a ``RecordingAdapter`` (ids prefixed ``rec``), then on
a ``ReplayBroker`` of that recording with other ids (``run``): the replayed reports must equal
the recorded ones translated to the new ids, and every assertion of the scenario must hold on
both runs (open-orders answers included). Adapters call back on their own thread; ``drain()``
waits for them, no sleeps.
A later adapter joins by adding a param to ``run`` and a way to drain and halt it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest

from tradeloom.broker.adapter import BrokerAdapter
from tradeloom.broker.paper import PaperBroker
from tradeloom.broker.recording import RecordingAdapter
from tradeloom.broker.replay import ReplayBroker
from tradeloom.broker.reports import (
    AmendRequest,
    BrokerAccepted,
    BrokerCanceled,
    BrokerCancelRejected,
    BrokerExpired,
    BrokerFill,
    BrokerRejected,
    BrokerReplaced,
    BrokerReport,
    CancelRequest,
    OpenOrders,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock

D = Decimal
START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
INSTRUMENTS = [Instrument("ACME", D("0.01"), D("1"), D("100"))]


class Drainable(Protocol):
    def drain(self, within: float = 5.0) -> None: ...


class Session:
    """Drives one adapter through a scenario and collects what it reports."""

    def __init__(
        self, adapter: BrokerAdapter, venue: Drainable, clock: ManualClock, prefix: str
    ) -> None:
        self.adapter = adapter
        self.venue = venue
        self.clock = clock
        self.prefix = prefix
        self.reports: list[BrokerReport] = []
        self.answers: list[OpenOrders] = []
        self.reports_before_answer: list[int] = []
        self.threads: set[str] = set()
        self._seen = 0

    def receive(self, report: BrokerReport) -> None:  # on the adapter's thread
        self.threads.add(threading.current_thread().name)
        self.reports.append(report)

    def answer(self, answer: OpenOrders) -> None:  # on the adapter's thread
        self.threads.add(threading.current_thread().name)
        self.reports_before_answer.append(len(self.reports))
        self.answers.append(answer)

    def oid(self, n: int) -> str:
        return f"{self.prefix}-order-{n}"

    @property
    def account(self) -> str:
        return f"{self.prefix}-account"

    def submit(self, n: int, side: Side, order_type: OrderType, qty: str, **terms: Any) -> None:
        tif = terms.pop("tif", TimeInForce.DAY)
        symbol = terms.pop("symbol", "ACME")
        prices = {key: D(value) for key, value in terms.items()}
        self.adapter.submit(
            SubmitOrder(
                order_id=self.oid(n),
                account_id=self.account,
                symbol=symbol,
                side=side,
                order_type=order_type,
                quantity=D(qty),
                time_in_force=tif,
                **prices,
            )
        )

    def cancel(self, n: int) -> None:
        self.adapter.cancel(CancelRequest(order_id=self.oid(n), account_id=self.account))

    def amend(self, n: int, **terms: str) -> None:
        prices = {key: D(value) for key, value in terms.items()}
        self.adapter.amend(AmendRequest(order_id=self.oid(n), account_id=self.account, **prices))

    def quote(self, bid: str, ask: str, last: str | None = None) -> None:
        self.clock.advance(timedelta(seconds=1))
        self.adapter.on_price(
            PriceUpdate(
                symbol="ACME",
                bid=D(bid),
                ask=D(ask),
                last=None if last is None else D(last),
                volume=D(0),
                exchange_time=self.clock.now(),
                venue="SIMX",
            )
        )

    def ask_open_orders(self) -> None:
        self.adapter.query_open_orders(self.answer)

    def open_orders(self) -> tuple[str, ...]:
        """The broker's answer to a query asked now (once it handled everything sent)."""
        self.ask_open_orders()
        self.venue.drain()
        return self.answers[-1].order_ids

    def halt(self, symbol: str) -> None:
        """Venue control: only a simulated venue can be halted; a replay already has it."""
        if isinstance(self.venue, PaperBroker):
            self.venue.halt(symbol)

    def new(self) -> list[BrokerReport]:
        """Reports since the last call, once the adapter has handled everything sent."""
        self.venue.drain()
        fresh, self._seen = self.reports[self._seen :], len(self.reports)
        return fresh


Scenario = Callable[[Session], None]


def _play(
    adapter: BrokerAdapter, venue: Drainable, clock: ManualClock, prefix: str, scenario: Scenario
) -> Session:
    session = Session(adapter, venue, clock, prefix)
    adapter.start(session.receive)
    try:
        scenario(session)
        session.new()
    finally:
        adapter.stop()
    assert threading.current_thread().name not in session.threads, "called back on caller"
    return session


def _renamed(report: BrokerReport, old: str, new: str) -> BrokerReport:
    return dataclasses.replace(
        report,
        order_id=report.order_id.replace(old, new),
        account_id=report.account_id.replace(old, new),
    )


def _renamed_answer(answer: OpenOrders, old: str, new: str) -> OpenOrders:
    return OpenOrders(order_ids=tuple(i.replace(old, new) for i in answer.order_ids))


def _paper(clock: ManualClock) -> PaperBroker:
    return PaperBroker(INSTRUMENTS, clock, displayed_quantity=D(100))


@pytest.fixture(params=["paper", "replay"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Scenario], None]:
    def on_paper(scenario: Scenario) -> None:
        clock = ManualClock(START)
        paper = _paper(clock)
        _play(paper, paper, clock, "p", scenario)

    def on_replay(scenario: Scenario) -> None:
        path = tmp_path / "session.jsonl"
        clock = ManualClock(START)
        paper = _paper(clock)
        recorded = _play(RecordingAdapter(paper, path), paper, clock, "rec", scenario)
        replay = ReplayBroker(path)
        replayed = _play(replay, replay, ManualClock(START), "run", scenario)
        assert replay.finished, "the replay did not consume the whole recording"
        assert replayed.reports == [_renamed(r, "rec", "run") for r in recorded.reports]
        assert replayed.answers == [_renamed_answer(a, "rec", "run") for a in recorded.answers]

    return on_paper if request.param == "paper" else on_replay


def _one(reports: list[BrokerReport], *kinds: type) -> None:
    assert [type(r) for r in reports] == list(kinds), reports


B, S = Side.BUY, Side.SELL
MKT, LMT, STP = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP


def test_market_buy_fills_at_the_ask(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, MKT, "10")
        reports = s.new()
        _one(reports, BrokerAccepted, BrokerFill)
        fill = reports[1]
        assert isinstance(fill, BrokerFill)
        assert (fill.quantity, fill.price) == (D(10), D("100.02"))
        assert (fill.cumulative_quantity, fill.leaves_quantity) == (D(10), D(0))
        assert fill.filled_at == s.clock.now()

    run(scenario)


def test_limit_rests_then_fills_when_the_price_crosses(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, LMT, "10", limit_price="100.00")
        _one(s.new(), BrokerAccepted)
        s.quote("99.95", "99.99")
        (fill,) = s.new()
        assert isinstance(fill, BrokerFill)
        assert fill.price == D("99.99")

    run(scenario)


def test_a_large_order_fills_over_several_updates(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, MKT, "250")
        s.quote("99.99", "100.03")
        s.quote("100.00", "100.04")
        reports = s.new()
        _one(reports, BrokerAccepted, BrokerFill, BrokerFill, BrokerFill)
        fills = [r for r in reports if isinstance(r, BrokerFill)]
        assert [f.quantity for f in fills] == [D(100), D(100), D(50)]
        assert [f.price for f in fills] == [D("100.02"), D("100.03"), D("100.04")]
        assert [f.cumulative_quantity for f in fills] == [D(100), D(200), D(250)]
        assert [f.leaves_quantity for f in fills] == [D(150), D(50), D(0)]
        assert len({f.fill_id for f in fills}) == 3

    run(scenario)


def test_cancel_a_resting_order(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, LMT, "10", limit_price="99.00")
        s.cancel(1)
        _one(s.new(), BrokerAccepted, BrokerCanceled)

    run(scenario)


def test_cancel_after_the_fill_is_too_late(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, MKT, "10")
        s.cancel(1)
        reports = s.new()
        _one(reports, BrokerAccepted, BrokerFill, BrokerCancelRejected)
        assert isinstance(reports[2], BrokerCancelRejected)
        assert "too late to cancel" in reports[2].reason

    run(scenario)


def test_amend_a_resting_limit(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, LMT, "10", limit_price="99.00")
        s.amend(1, quantity="20", limit_price="99.50")
        reports = s.new()
        _one(reports, BrokerAccepted, BrokerReplaced)
        replaced = reports[1]
        assert isinstance(replaced, BrokerReplaced)
        assert (replaced.quantity, replaced.limit_price) == (D(20), D("99.50"))
        s.quote("99.40", "99.50")
        (fill,) = s.new()
        assert isinstance(fill, BrokerFill)
        assert (fill.quantity, fill.price) == (D(20), D("99.50"))

    run(scenario)


def test_ioc_fills_what_it_can_and_cancels_the_rest(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, LMT, "150", limit_price="100.02", tif=TimeInForce.IOC)
        reports = s.new()
        _one(reports, BrokerAccepted, BrokerFill, BrokerCanceled)
        assert isinstance(reports[1], BrokerFill)
        assert (reports[1].quantity, reports[1].leaves_quantity) == (D(100), D(50))

    run(scenario)


def test_fok_that_cannot_fill_at_once_is_canceled(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, LMT, "150", limit_price="100.02", tif=TimeInForce.FOK)
        _one(s.new(), BrokerAccepted, BrokerCanceled)

    run(scenario)


def test_stop_triggers_and_fills_as_market(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, STP, "10", stop_price="101.00")
        _one(s.new(), BrokerAccepted)
        s.quote("100.98", "101.02", last="101.00")
        (fill,) = s.new()
        assert isinstance(fill, BrokerFill)
        assert fill.price == D("101.02")

    run(scenario)


def test_unknown_symbol_is_rejected(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.submit(1, B, LMT, "10", limit_price="10.00", symbol="NOPE")
        (rejected,) = s.new()
        assert isinstance(rejected, BrokerRejected)
        assert rejected.code == "unknown_symbol"

    run(scenario)


def test_halted_instrument_is_rejected(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.halt("ACME")
        s.submit(1, S, MKT, "10")
        (rejected,) = s.new()
        assert isinstance(rejected, BrokerRejected)
        assert rejected.code == "instrument_halted"

    run(scenario)


def test_day_order_expires_at_the_session_close(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, LMT, "10", limit_price="99.00")
        _one(s.new(), BrokerAccepted)
        s.clock.set(datetime(2026, 3, 2, 21, 0, tzinfo=UTC))
        s.quote("98.90", "98.95")  # would cross, but the session closed first
        (expired,) = s.new()
        assert isinstance(expired, BrokerExpired)
        assert expired.order_id == s.oid(1)

    run(scenario)


def test_open_orders_are_those_accepted_and_not_finished(run: Callable[[Scenario], None]) -> None:
    def scenario(s: Session) -> None:
        assert s.open_orders() == (), "a new venue works no order"
        s.quote("99.98", "100.02")
        s.submit(1, B, LMT, "10", limit_price="99.00", tif=TimeInForce.GTC)
        s.submit(2, B, MKT, "10")  # filled at once
        s.submit(3, S, LMT, "10", limit_price="101.00")
        s.submit(4, B, LMT, "10", limit_price="98.00")
        s.cancel(4)
        s.submit(5, B, LMT, "10", limit_price="10.00", symbol="NOPE")  # rejected
        s.submit(6, B, STP, "150", stop_price="100.00")  # triggered, partly filled
        assert s.open_orders() == (s.oid(1), s.oid(3), s.oid(6))

    run(scenario)


def test_open_orders_are_answered_after_the_reports_produced_before(
    run: Callable[[Scenario], None],
) -> None:
    def scenario(s: Session) -> None:
        s.quote("99.98", "100.02")
        s.submit(1, B, MKT, "10")
        s.submit(2, B, LMT, "10", limit_price="99.00")
        s.ask_open_orders()  # not drained in between: the answer still comes after the fill
        _one(s.new(), BrokerAccepted, BrokerFill, BrokerAccepted)
        assert s.reports_before_answer == [3]
        assert s.answers[-1].order_ids == (s.oid(2),)

    run(scenario)

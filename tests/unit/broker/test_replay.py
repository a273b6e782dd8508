"""Recording and replay: exact round trips, divergence refused clearly, ids translated."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tradeloom.broker.adapter import BrokerUnavailable
from tradeloom.broker.paper import PaperBroker
from tradeloom.broker.recording import RecordingAdapter, decode_entry, encode_entry
from tradeloom.broker.replay import ReplayBroker, ReplayDivergence
from tradeloom.broker.reports import (
    BrokerAccepted,
    BrokerFill,
    BrokerReport,
    CancelRequest,
    OpenOrders,
    OpenOrdersQuery,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock

D = Decimal
START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


def order(order_id: str, qty: str = "10", account: str = "acct") -> SubmitOrder:
    return SubmitOrder(
        order_id=order_id,
        account_id=account,
        symbol="ACME",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=D(qty),
        time_in_force=TimeInForce.DAY,
    )


QUOTE = PriceUpdate(
    symbol="ACME",
    bid=D("99.98"),
    ask=D("100.02"),
    last=None,
    volume=D("0"),
    exchange_time=START,
    venue="SIMX",
)


def test_entries_round_trip_exactly() -> None:
    fill = BrokerFill(
        order_id="o",
        account_id="a",
        fill_id="f",
        quantity=D("10.000"),
        price=D("100.0200"),
        filled_at=START,
        cumulative_quantity=D("10.000"),
        leaves_quantity=D("0E-3"),
        fee=D("0.050"),
    )
    for entry in (fill, order("o"), QUOTE, OpenOrdersQuery(), OpenOrders(order_ids=("o", "p"))):
        _kind, decoded = decode_entry(encode_entry(entry))
        assert decoded == entry
        assert str(getattr(decoded, "quantity", "")) == str(getattr(entry, "quantity", ""))
    assert decode_entry(encode_entry(fill))[0] == "report"
    assert decode_entry(encode_entry(QUOTE))[0] == "price"
    assert decode_entry(encode_entry(OpenOrdersQuery()))[0] == "open_orders"
    assert decode_entry(encode_entry(OpenOrders(order_ids=())))[0] == "answer"


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A paper session: a quote, then a market order of 10 that fills at once."""
    path = tmp_path / "session.jsonl"
    paper = PaperBroker([Instrument("ACME", D("0.01"), D("1"), D("100"))], ManualClock(START))
    recorder = RecordingAdapter(paper, path)
    recorder.start(lambda report: None)
    recorder.on_price(QUOTE)
    recorder.submit(order("rec-1", account="rec-acct"))
    paper.drain()
    recorder.stop()
    return path


def test_replay_translates_ids_and_calls_back_from_its_own_thread(recording: Path) -> None:
    got: list[BrokerReport] = []
    threads: set[str] = set()

    def receive(report: BrokerReport) -> None:
        threads.add(threading.current_thread().name)
        got.append(report)

    replay = ReplayBroker(recording)
    replay.start(receive)
    replay.on_price(QUOTE)
    replay.submit(order("new-1", account="new-acct"))
    replay.drain()
    replay.stop()
    assert [type(r) for r in got] == [BrokerAccepted, BrokerFill]
    assert {(r.order_id, r.account_id) for r in got} == {("new-1", "new-acct")}
    assert threads == {"replay-broker"}
    assert replay.finished


def test_a_diverging_request_is_refused_clearly_and_so_is_everything_after(
    recording: Path,
) -> None:
    replay = ReplayBroker(recording)
    replay.start(lambda report: None)
    try:
        replay.on_price(QUOTE)
        expected = r"at input 2: expected .*quantity=Decimal\('10'\)"
        with pytest.raises(ReplayDivergence, match=expected):
            replay.submit(order("x", qty="11"))
        with pytest.raises(ReplayDivergence):
            replay.submit(order("x"))
    finally:
        replay.stop()


def test_a_request_past_the_end_of_the_recording_diverges(recording: Path) -> None:
    replay = ReplayBroker(recording)
    replay.start(lambda report: None)
    try:
        replay.on_price(QUOTE)
        replay.submit(order("x"))
        with pytest.raises(ReplayDivergence, match="the recording has ended"):
            replay.cancel(CancelRequest(order_id="x", account_id="acct"))
    finally:
        replay.stop()


def test_replay_refuses_requests_before_start(recording: Path) -> None:
    with pytest.raises(BrokerUnavailable):
        ReplayBroker(recording).submit(order("x"))


def test_an_open_orders_query_the_recording_does_not_hold_diverges(recording: Path) -> None:
    replay = ReplayBroker(recording)
    replay.start(lambda report: None)
    try:
        replay.on_price(QUOTE)
        with pytest.raises(ReplayDivergence, match="at input 2: expected SubmitOrder"):
            replay.query_open_orders(lambda answer: None)
    finally:
        replay.stop()

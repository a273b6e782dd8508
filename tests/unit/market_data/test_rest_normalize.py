"""The REST snapshot normalizer: records, change detection, and trades from volume deltas."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tradeloom.market_data.feeds.rest_poll import (
    QuoteState,
    change_to_update,
    parse_record,
    split_snapshot,
    unseen,
)
from tradeloom.market_data.normalize import MalformedMessage

RECORD = (
    b'{"symbol":"AAPL","bid":"187.21","ask":"187.23","last":"187.22","volume":"1500",'
    b'"time":"2026-01-05T14:30:00Z","venue":"XNAS"}'
)


def state(volume: str, bid: str = "187.21", last: str | None = "187.22") -> QuoteState:
    return QuoteState(
        symbol="AAPL",
        bid=Decimal(bid),
        ask=Decimal("187.23"),
        last=None if last is None else Decimal(last),
        volume=Decimal(volume),
        time=datetime(2026, 1, 5, 14, 30, tzinfo=UTC),
        venue="SIMX",
    )


def test_a_record_parses_into_exact_values() -> None:
    parsed = parse_record(RECORD, venue="SIMX")
    assert (parsed.symbol, parsed.bid, parsed.last, parsed.volume, parsed.venue) == (
        "AAPL", Decimal("187.21"), Decimal("187.22"), Decimal(1500), "XNAS"
    )  # fmt: skip
    assert parsed.time == datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def test_a_baseline_reports_the_quote_but_no_trade() -> None:
    update = change_to_update(state("1500"), previous=None)
    assert update is not None
    assert (update.bid, update.last, update.volume) == (Decimal("187.21"), None, Decimal(0))


def test_an_unchanged_quote_reports_nothing() -> None:
    assert change_to_update(state("1500"), state("1500")) is None


def test_grown_volume_is_a_trade_of_the_difference() -> None:
    update = change_to_update(state("1800"), state("1500"))
    assert update is not None
    assert (update.last, update.volume) == (Decimal("187.22"), Decimal(300))


def test_a_symbol_first_seen_after_the_baseline_reports_its_whole_volume() -> None:
    update = change_to_update(state("400"), unseen("AAPL", "SIMX"))
    assert update is not None
    assert update.volume == Decimal(400)


def test_a_quote_change_without_volume_is_no_trade_and_a_volume_reset_is_no_trade() -> None:
    moved = change_to_update(state("1500", bid="187.20"), state("1500"))
    reset = change_to_update(state("100"), state("1500"))
    assert moved is not None
    assert reset is not None
    assert (moved.last, reset.last, reset.volume) == (None, None, Decimal(0))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (RECORD.replace(b'"187.21"', b'"NaN"'), "not finite"),
        (RECORD.replace(b'"187.21"', b"187.21"), "Expected `str"),
        (RECORD.replace(b'"1500"', b'"-1"'), "negative"),
        (RECORD.replace(b'"volume":"1500",', b""), "missing required field `volume`"),
        (RECORD.replace(b"00Z", b"00"), "no timezone"),
        (RECORD.replace(b'"AAPL"', b'" "'), "symbol: empty"),
        (b"[]", "bad quote record"),
    ],
)
def test_malformed_records_raise(record: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_record(record, venue="SIMX")


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"quotes": 3}', b"", b'{"data": []}'])
def test_a_body_that_is_not_a_snapshot_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedMessage, match="not a quote snapshot"):
        split_snapshot(body)

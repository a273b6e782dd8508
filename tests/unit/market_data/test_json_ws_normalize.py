"""The JSON WebSocket normalizer: hand-written exchange messages, good and bad."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tradeloom.market_data.feeds.json_ws import normalize_message, split_frame
from tradeloom.market_data.normalize import MalformedMessage

QUOTE = (
    b'{"T":"q","S":"AAPL","bp":"187.21","bs":"300","ap":"187.23","as":"200",'
    b'"t":"2026-01-05T14:30:00.123456Z","x":"XNAS"}'
)
TRADE = b'{"T":"t","S":"AAPL","p":"187.22","s":"100","t":"2026-01-05T14:30:01Z"}'


def test_a_quote_becomes_bid_and_ask_without_a_trade() -> None:
    update = normalize_message(QUOTE, venue="SIMX")
    assert update is not None
    assert (update.symbol, update.bid, update.ask, update.last, update.volume) == (
        "AAPL", Decimal("187.21"), Decimal("187.23"), None, Decimal(0)
    )  # fmt: skip
    assert update.exchange_time == datetime(2026, 1, 5, 14, 30, 0, 123456, tzinfo=UTC)
    assert update.venue == "XNAS"


def test_a_trade_becomes_last_and_volume_with_the_default_venue() -> None:
    update = normalize_message(TRADE, venue="SIMX")
    assert update is not None
    assert (update.bid, update.last, update.volume, update.venue) == (
        None, Decimal("187.22"), Decimal(100), "SIMX"
    )  # fmt: skip


def test_a_timestamp_with_another_offset_is_converted_to_utc() -> None:
    update = normalize_message(TRADE.replace(b"01Z", b"01+02:00"), venue="SIMX")
    assert update is not None
    assert update.exchange_time == datetime(2026, 1, 5, 12, 30, 1, tzinfo=UTC)
    assert update.exchange_time.tzinfo is UTC


def test_heartbeats_and_unknown_fields_are_accepted_quietly() -> None:
    assert normalize_message(b'{"T":"h"}', venue="SIMX") is None
    assert normalize_message(TRADE.replace(b"}", b',"z":[1,2]}'), venue="SIMX") is not None


def test_a_frame_is_one_message_or_an_array_of_them() -> None:
    assert len(split_frame(b"[" + QUOTE + b"," + TRADE + b"]")) == 2
    assert len(split_frame(QUOTE.decode())) == 1


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (QUOTE.replace(b'"187.21"', b'"NaN"'), "not finite"),
        (QUOTE.replace(b'"187.21"', b'"1e999x"'), "not a decimal"),
        (QUOTE.replace(b'"187.21"', b"187.21"), "Expected `str`"),
        (QUOTE.replace(b'"187.21"', b'"-1"'), "not positive"),
        (TRADE.replace(b'"100"', b'"-5"'), "negative"),
        (QUOTE.replace(b'"ap":"187.23",', b""), "missing required field `ap`"),
        (TRADE.replace(b'"S":"AAPL"', b'"S":""'), "symbol"),
        (TRADE.replace(b"01Z", b"01"), "no timezone"),
        (TRADE.replace(b"2026-01-05T14:30:01Z", b"yesterday"), "not an ISO 8601"),
        (b'{"T":"b","S":"AAPL"}', "Invalid value 'b'"),
        (b'{"S":"AAPL"}', "missing required field `T`"),
        (b"\xff\xfe garbage", "bad message"),
        (b"[1,2", "bad message"),
    ],
)
def test_malformed_messages_raise_malformed_message(message: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        normalize_message(message, venue="SIMX")


@pytest.mark.parametrize("frame", [b"[garbage", b"[\x00\x01\x02", "[{"])
def test_a_frame_that_is_not_json_is_malformed(frame: bytes | str) -> None:
    with pytest.raises(MalformedMessage, match="not JSON"):
        split_frame(frame)

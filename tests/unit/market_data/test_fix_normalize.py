"""The FIX 4.4 normalizer: snapshots, incrementals with repeating groups, and broken messages."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import simplefix  # type: ignore[import-untyped]

from tradeloom.market_data.feeds.fix_codec import (
    add_incremental_entries,
    add_snapshot_entries,
    new_message,
    normalize_fix,
)
from tradeloom.market_data.normalize import MalformedMessage
from tradeloom.market_data.simulator import Quote, Trade

SENT = datetime(2026, 1, 5, 14, 30, 5, tzinfo=UTC)
AT = datetime(2026, 1, 5, 14, 30, 0, 250000, tzinfo=UTC)


def parse(raw: bytes) -> simplefix.FixMessage:
    """Through the real parser, as the feed does."""
    parser = simplefix.FixParser()
    parser.append_buffer(raw)
    message = parser.get_message()
    assert message is not None
    return message


def hand_written(msg_type: str, body: list[tuple[int, str]]) -> simplefix.FixMessage:
    message = new_message(msg_type, "SIMX", "TRADELOOM", 7, SENT)
    for tag, value in body:
        message.append_pair(tag, value)
    return parse(message.encode())


INCREMENTAL = [
    (268, "3"),
    (279, "0"), (269, "0"), (55, "AAPL"), (270, "187.21"), (271, "300"),
    (272, "20260105"), (273, "14:30:00.250"),
    (279, "0"), (269, "1"), (55, "AAPL"), (270, "187.23"), (271, "200"),
    (272, "20260105"), (273, "14:30:00.250"),
    (279, "0"), (269, "2"), (55, "MSFT"), (270, "415.50"), (271, "100"),
]  # fmt: skip


def test_an_incremental_groups_entries_per_symbol_and_time() -> None:
    aapl, msft = normalize_fix(hand_written("X", INCREMENTAL), venue="SIMX")
    assert (aapl.symbol, aapl.bid, aapl.ask, aapl.last, aapl.exchange_time) == (
        "AAPL", Decimal("187.21"), Decimal("187.23"), None, AT
    )  # fmt: skip
    assert (msft.symbol, msft.last, msft.volume, msft.bid) == (
        "MSFT", Decimal("415.50"), Decimal(100), None
    )  # fmt: skip
    assert msft.exchange_time == SENT  # no 272/273: SendingTime


def test_a_repeated_entry_type_starts_a_new_update() -> None:
    body = [(268, "2")] + [
        (tag, value)
        for price in ("10.00", "10.01")
        for tag, value in ((279, "0"), (269, "0"), (55, "KO"), (270, price))
    ]
    first, second = normalize_fix(hand_written("X", body), venue="SIMX")
    assert (first.bid, second.bid) == (Decimal("10.00"), Decimal("10.01"))


def test_deletes_and_other_entry_types_are_ignored() -> None:
    body = [(268, "2"), (279, "2"), (269, "0"), (55, "KO"), (270, "1"),
            (279, "0"), (269, "4"), (55, "KO"), (270, "60.20")]  # fmt: skip
    assert normalize_fix(hand_written("X", body), venue="SIMX") == []


def test_a_snapshot_restates_the_book_without_replaying_its_last_trade() -> None:
    message = new_message("W", "SIMX", "TRADELOOM", 3, SENT)
    quote = Quote("KO", Decimal("60.20"), Decimal(500), Decimal("60.22"), Decimal(300), AT, "SIMX")
    add_snapshot_entries(message, quote, Trade("KO", Decimal("60.21"), Decimal(100), AT, "SIMX"))
    (update,) = normalize_fix(parse(message.encode()), venue="SIMX")
    assert (update.symbol, update.bid, update.ask, update.last, update.volume) == (
        "KO", Decimal("60.20"), Decimal("60.22"), None, Decimal(0)
    )  # fmt: skip


def test_built_incrementals_round_trip_through_the_parser() -> None:
    quote = Quote("KO", Decimal("60.20"), Decimal(500), Decimal("60.22"), Decimal(300), AT, "SIMX")
    trade = Trade("KO", Decimal("60.21"), Decimal(100), AT, "SIMX")
    message = new_message("X", "SIMX", "TRADELOOM", 4, SENT)
    add_incremental_entries(message, [quote, trade])
    (update,) = normalize_fix(parse(message.encode()), venue="SIMX")
    assert (update.bid, update.ask, update.last, update.volume, update.exchange_time) == (
        Decimal("60.20"), Decimal("60.22"), Decimal("60.21"), Decimal(100), AT
    )  # fmt: skip


@pytest.mark.parametrize("msg_type", ["A", "0", "5"])
def test_session_messages_yield_nothing(msg_type: str) -> None:
    assert normalize_fix(hand_written(msg_type, [(98, "0")]), venue="SIMX") == []


def replace_value(body: list[tuple[int, str]], tag: int, value: str) -> list[tuple[int, str]]:
    index = next(i for i, (t, _) in enumerate(body) if t == tag)
    return [*body[:index], (tag, value), *body[index + 1 :]]


@pytest.mark.parametrize(
    ("msg_type", "body", "reason"),
    [
        ("X", replace_value(INCREMENTAL, 270, "abc"), "not a decimal"),
        ("X", replace_value(INCREMENTAL, 270, "NaN"), "not finite"),
        ("X", replace_value(INCREMENTAL, 270, "0"), "not positive"),
        ("X", replace_value(INCREMENTAL, 268, "5"), "declares 5 entries, found 3"),
        ("X", replace_value(INCREMENTAL, 268, "x"), "NoMDEntries"),
        ("X", INCREMENTAL[1:], "NoMDEntries missing"),
        ("X", replace_value(INCREMENTAL, 273, "25:99:00"), "not a FIX UTCTimestamp"),
        ("X", [(268, "1"), (279, "0"), (269, "0"), (270, "1.00")], "55: missing"),
        ("X", [(268, "1"), (279, "0"), (269, "0"), (55, "KO")], "270: missing"),
        ("W", [(268, "1"), (269, "0"), (270, "1.00")], "55: missing"),
        ("Z", [(58, "hello")], "unsupported MsgType"),
    ],
)
def test_malformed_fix_messages_raise(
    msg_type: str, body: list[tuple[int, str]], reason: str
) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        normalize_fix(hand_written(msg_type, body), venue="SIMX")


def test_a_message_without_sending_time_is_malformed() -> None:
    message = simplefix.FixMessage()
    message.append_pair(8, "FIX.4.4")
    message.append_pair(35, "X")
    message.append_pair(268, 0)
    with pytest.raises(MalformedMessage, match="52: SendingTime missing"):
        normalize_fix(parse(message.encode()), venue="SIMX")

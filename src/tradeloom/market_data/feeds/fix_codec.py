"""FIX 4.4 market data: building and normalizing ``35=W`` snapshots and ``35=X`` incrementals.

Messages are built and parsed with simplefix (``FixMessage``/``FixParser``), never by string
splitting. The fields used:

* header: 8 BeginString ``FIX.4.4``, 35 MsgType, 49/56 sender/target, 34 MsgSeqNum,
  52 SendingTime (``YYYYMMDD-HH:MM:SS.ffffff``, UTC by the FIX definition);
* ``W`` (snapshot full refresh): 55 Symbol, 268 NoMDEntries, then per entry 269 MDEntryType
  (0 bid, 1 offer, 2 trade), 270 MDEntryPx, 271 MDEntrySize, 272 MDEntryDate, 273 MDEntryTime;
* ``X`` (incremental refresh): 268 NoMDEntries, then per entry 279 MDUpdateAction (0 new,
  1 change, 2 delete) first, 269, 55 Symbol, 270, 271, 272, 273.

Normalization: consecutive entries of one symbol and one time become one update until an
entry type repeats (a quote is a bid and an offer entry; a following trade entry joins them).
Entries with an entry type other than 0/1/2, and deletes, are ignored. A snapshot restates the
book: its trade entry repeats an earlier print, so it is not turned into ``last`` (candles
would count the print twice). Session messages (A logon, 0 heartbeat, 5 logout) yield nothing;
any other MsgType is malformed. An entry without 272/273 takes its time from 52.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import simplefix  # type: ignore[import-untyped]

from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.normalize import MalformedMessage, decimal_field, price_update
from tradeloom.market_data.simulator import Quote, Trade

BEGIN_STRING = "FIX.4.4"
SESSION_TYPES = {b"A", b"0", b"5"}
BID, OFFER, TRADE = b"0", b"1", b"2"
DELETE = b"2"
ENTRY_FIELDS = {279, 269, 55, 270, 271, 272, 273}


FixMessage = Any  # simplefix ships no type information


@dataclass
class _Pending:
    """One update being assembled from consecutive entries of one symbol and time."""

    symbol: str
    time: datetime
    prices: dict[bytes, Decimal] = field(default_factory=dict)
    size: Decimal = Decimal(0)

    def accepts(self, symbol: str, moment: datetime, entry_type: bytes) -> bool:
        return symbol == self.symbol and moment == self.time and entry_type not in self.prices


def fix_timestamp(moment: datetime) -> str:
    """A UTCTimestamp with microseconds, e.g. ``20260105-14:30:00.123456``."""
    return moment.astimezone(UTC).strftime("%Y%m%d-%H:%M:%S.%f")


def parse_fix_time(value: bytes | str, field_name: str) -> datetime:
    """A FIX UTCTimestamp (``YYYYMMDD-HH:MM:SS[.fff…]``); FIX defines it as UTC."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return _parse_fix_time(text, field_name)


@lru_cache(maxsize=4096)
def _parse_fix_time(text: str, field_name: str) -> datetime:
    """Cached: the entries of a message, and consecutive messages, mostly share their times."""
    pattern = "%Y%m%d-%H:%M:%S.%f" if "." in text else "%Y%m%d-%H:%M:%S"
    try:
        return datetime.strptime(text, pattern).replace(tzinfo=UTC)
    except ValueError as exc:
        raise MalformedMessage(f"{field_name}: {text!r} is not a FIX UTCTimestamp") from exc


def new_message(message_type: str, sender: str, target: str, seq: int, now: datetime) -> Any:
    """A FIX 4.4 message with its standard header filled in."""
    message = simplefix.FixMessage()
    message.append_pair(8, BEGIN_STRING, header=True)
    message.append_pair(35, message_type, header=True)
    message.append_pair(49, sender, header=True)
    message.append_pair(56, target, header=True)
    message.append_pair(34, seq, header=True)
    message.append_pair(52, fix_timestamp(now), header=True)
    return message


def _append_entry(
    message: FixMessage,
    entry_type: bytes,
    price: Decimal,
    size: Decimal,
    moment: datetime,
    symbol: str | None = None,
) -> None:
    """One MDEntry; ``symbol`` goes inside the entry (incremental) when given."""
    message.append_pair(269, entry_type)
    if symbol is not None:
        message.append_pair(55, symbol)
    message.append_pair(270, str(price))
    message.append_pair(271, str(size))
    message.append_pair(272, moment.strftime("%Y%m%d"))
    message.append_pair(273, moment.strftime("%H:%M:%S.%f"))


def add_incremental_entries(message: FixMessage, ticks: Sequence[Quote | Trade]) -> None:
    """Append 268 and one entry per side of each quote and per trade (279=0, new)."""
    entries: list[tuple[str, bytes, Decimal, Decimal, datetime]] = []
    for tick in ticks:
        if isinstance(tick, Quote):
            entries.append((tick.symbol, BID, tick.bid, tick.bid_size, tick.time))
            entries.append((tick.symbol, OFFER, tick.ask, tick.ask_size, tick.time))
        else:
            entries.append((tick.symbol, TRADE, tick.price, tick.size, tick.time))
    message.append_pair(268, len(entries))
    for symbol, entry_type, price, size, moment in entries:
        message.append_pair(279, 0)
        _append_entry(message, entry_type, price, size, moment, symbol)


def add_snapshot_entries(message: FixMessage, quote: Quote, trade: Trade | None) -> None:
    """Append 55 and the bid, the offer and (if any) the last trade of one symbol."""
    message.append_pair(55, quote.symbol)
    message.append_pair(268, 2 if trade is None else 3)
    _append_entry(message, BID, quote.bid, quote.bid_size, quote.time)
    _append_entry(message, OFFER, quote.ask, quote.ask_size, quote.time)
    if trade is not None:
        _append_entry(message, TRADE, trade.price, trade.size, trade.time)


def normalize_fix(message: FixMessage, venue: str) -> list[PriceUpdate]:
    """A parsed FIX message → its updates (none for session messages); MalformedMessage else."""
    message_type = message.get(35)
    if message_type in SESSION_TYPES:
        return []
    if message_type not in (b"W", b"X"):
        raise MalformedMessage(f"35: unsupported MsgType {message_type!r}")
    sent = message.get(52)
    if sent is None:
        raise MalformedMessage("52: SendingTime missing")
    sending_time = parse_fix_time(sent, "52")
    snapshot = message_type == b"W"
    entries = _entries(message, first_tag=269 if snapshot else 279)
    if snapshot:
        symbol = _text(message.get(55), "55")
        entries = [{**entry, 55: symbol.encode()} for entry in entries if entry.get(269) != TRADE]
    return _assemble(entries, sending_time, venue)


def _entries(message: FixMessage, first_tag: int) -> list[dict[int, bytes]]:
    """The NoMDEntries repeating group: one dict per entry, split where ``first_tag`` recurs."""
    declared = message.get(268)
    if declared is None or not declared.isdigit():
        raise MalformedMessage(f"268: NoMDEntries missing or not a count: {declared!r}")
    entries: list[dict[int, bytes]] = []
    in_group = False
    for raw_tag, value in message.pairs:
        tag = int(raw_tag)
        if tag == 268:
            in_group = True
        elif in_group and tag == first_tag:
            entries.append({tag: value})
        elif in_group and entries and tag in ENTRY_FIELDS and tag not in entries[-1]:
            entries[-1][tag] = value
    if len(entries) != int(declared):
        raise MalformedMessage(f"268: declares {int(declared)} entries, found {len(entries)}")
    return entries


def _assemble(entries: list[dict[int, bytes]], sent: datetime, venue: str) -> list[PriceUpdate]:
    updates: list[PriceUpdate] = []
    pending: _Pending | None = None
    for entry in entries:
        entry_type = entry.get(269)
        if entry.get(279) == DELETE or entry_type not in (BID, OFFER, TRADE):
            continue
        symbol = _text(entry.get(55), "55")
        moment = _entry_time(entry, sent)
        if pending is None or not pending.accepts(symbol, moment, entry_type):
            if pending is not None:
                updates.append(_finish(pending, venue))
            pending = _Pending(symbol, moment)
        pending.prices[entry_type] = decimal_field(
            _text(entry.get(270), "270"), "270", positive=True
        )
        if entry_type == TRADE:
            pending.size = decimal_field(_text(entry.get(271), "271"), "271")
    if pending is not None:
        updates.append(_finish(pending, venue))
    return updates


def _entry_time(entry: dict[int, bytes], sent: datetime) -> datetime:
    date, time = entry.get(272), entry.get(273)
    if date is None or time is None:
        return sent
    return parse_fix_time(date + b"-" + time, "272/273")


def _finish(pending: _Pending, venue: str) -> PriceUpdate:
    return price_update(
        symbol=pending.symbol,
        venue=venue,
        exchange_time=pending.time,
        bid=pending.prices.get(BID),
        ask=pending.prices.get(OFFER),
        last=pending.prices.get(TRADE),
        volume=pending.size,
    )


def _text(value: bytes | None, tag: str) -> str:
    if value is None:
        raise MalformedMessage(f"{tag}: missing")
    try:
        return value.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"{tag}: not ASCII") from exc

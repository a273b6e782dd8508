"""Events: immutable facts, one envelope with a typed payload.

Every event has a UUIDv7 id (its text sorts by creation time), an ``occurred_at`` in UTC, the
correlation id of the user action behind it, the id of the event or command that caused it,
and the account it concerns. The payload is one of the tagged structs below; its tag is the
event's ``type``. ``encode_event``/``decode_event`` are the single serialization used on the
bus and in the archive, and they round-trip every event exactly (decimals as strings,
timestamps with their zone).

A payload checks its own fields on construction, whether built in code or decoded: every
Decimal field holds a finite Decimal (an int or decimal text is made one; a float, a NaN or a
None where an amount is required raises :class:`InvalidNumber` naming the field), and every
timestamp is timezone-aware UTC (:class:`NaiveTimestamp` otherwise). Both are ValueErrors, so
decoding such a payload fails with ``msgspec.ValidationError``. What cannot be encoded and
decoded back equal is therefore refused where it is made, not on every consumer.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, TypeAlias

import msgspec
from msgspec.structs import force_setattr

from tradeloom.domain.ids import new_id
from tradeloom.domain.numbers import exact
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import require_utc

UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class Payload(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of every payload. The subclass's ``tag`` is the event type.

    ``gc=False``: payloads are frozen and hold only values (numbers, strings, times, tuples of
    payloads), so they can never be part of a reference cycle and the garbage collector need
    not track them. At 20,000 price updates a second, tracking them made the collector run
    often and scan long (measured pauses of 37-70 ms on the market-data path)."""

    def __post_init__(self) -> None:
        """Refuse an inexact amount or a non-UTC time; make an int or decimal text a Decimal.

        Runs on every payload constructed or decoded (20,000 price updates a second), so a
        field that is already right costs a class check (and ``is_finite`` for an amount);
        only the rest goes through the thorough :func:`exact` and :func:`require_utc`."""
        checked = _CHECKED_FIELDS.get(self.__class__) or _learn_fields(self.__class__)
        for name in checked.decimals:
            value = getattr(self, name)
            if value.__class__ is not Decimal or not value.is_finite():
                force_setattr(self, name, exact(value, field=name))
        for name in checked.optional_decimals:
            value = getattr(self, name)
            if value is not None and (value.__class__ is not Decimal or not value.is_finite()):
                force_setattr(self, name, exact(value, field=name))
        for name in checked.timestamps:
            value = getattr(self, name)
            if value.__class__ is not datetime or value.tzinfo is not UTC:
                require_utc(value, field=name)


class OrderSubmitted(Payload, frozen=True, kw_only=True, tag="order.submitted"):
    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


class OrderCancelRequested(Payload, frozen=True, kw_only=True, tag="order.cancel_requested"):
    order_id: str


class OrderAmendRequested(Payload, frozen=True, kw_only=True, tag="order.amend_requested"):
    order_id: str
    quantity: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


class OrderAccepted(Payload, frozen=True, kw_only=True, tag="order.accepted"):
    order_id: str
    broker_order_id: str


class OrderRejected(Payload, frozen=True, kw_only=True, tag="order.rejected"):
    order_id: str
    code: str
    reason: str


class _Fill(Payload, frozen=True, kw_only=True):
    order_id: str
    fill_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal = Decimal(0)
    filled_at: UtcDatetime
    cumulative_quantity: Decimal
    leaves_quantity: Decimal


class OrderPartiallyFilled(_Fill, frozen=True, kw_only=True, tag="order.partially_filled"):
    pass


class OrderFilled(_Fill, frozen=True, kw_only=True, tag="order.filled"):
    pass


class OrderCanceled(Payload, frozen=True, kw_only=True, tag="order.canceled"):
    order_id: str
    reason: str


class OrderCancelRejected(Payload, frozen=True, kw_only=True, tag="order.cancel_rejected"):
    """The broker (or execution, the broker being unreachable) refused a cancel request.

    Events archived before :class:`OrderReplaceRejected` existed also tell a refused amend
    this way, so applying one ends whichever request is pending (see ``Order.refuse_request``).
    """

    order_id: str
    reason: str


class OrderReplaceRejected(Payload, frozen=True, kw_only=True, tag="order.replace_rejected"):
    """The broker (or execution, the broker being unreachable) refused an amend request: the
    order keeps its terms. A user is told this apart from a refused cancel."""

    order_id: str
    reason: str


class OrderExpired(Payload, frozen=True, kw_only=True, tag="order.expired"):
    order_id: str


class OrderReplaced(Payload, frozen=True, kw_only=True, tag="order.replaced"):
    order_id: str
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


class PositionUpdated(Payload, frozen=True, kw_only=True, tag="position.updated"):
    """A position row after the fill ``fill_id`` (average cost; see domain/positions.py).

    ``cash`` is the account's cash after the fill. ``average_cost`` is None when flat."""

    symbol: str
    quantity: Decimal
    average_cost: Decimal | None
    cost_basis: Decimal
    realized_pnl: Decimal
    fees: Decimal
    cash: Decimal
    fill_id: str
    order_id: str
    filled_at: UtcDatetime


class PriceUpdate(Payload, frozen=True, kw_only=True, tag="market.price"):
    """The one canonical quote/trade update every feed is normalized into."""

    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None
    volume: Decimal
    exchange_time: UtcDatetime
    venue: str

    def __post_init__(self) -> None:
        """The check every payload makes, with a straight-line fast path: this is the payload
        built and decoded most (20,000 a second), and the path halves the check's cost on it.
        Anything not plainly right goes through the thorough check of :class:`Payload`."""
        bid, ask, last, volume, moment = (
            self.bid,
            self.ask,
            self.last,
            self.volume,
            self.exchange_time,
        )
        if not (
            (bid is None or (bid.__class__ is Decimal and bid.is_finite()))
            and (ask is None or (ask.__class__ is Decimal and ask.is_finite()))
            and (last is None or (last.__class__ is Decimal and last.is_finite()))
            and volume.__class__ is Decimal
            and volume.is_finite()
            and moment.__class__ is datetime
            and moment.tzinfo is UTC
        ):
            Payload.__post_init__(self)


class PriceBatch(Payload, frozen=True, kw_only=True, tag="market.prices"):
    """Several price updates travelling as one bus message, in feed order.

    Every update of one symbol always travels in batches of the same key (its shard), so
    batching keeps each symbol's order while it cuts the per-update cost of the bus by the
    batch size: one message per shard per flush instead of one per update.
    """

    updates: tuple[PriceUpdate, ...]


class CandleClosed(Payload, frozen=True, kw_only=True, tag="candle.closed"):
    """A bar that will not change any more. ``interval`` is its name: 1m, 5m or 1h."""

    symbol: str
    interval: str
    start: UtcDatetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int


class DeadLettered(Payload, frozen=True, kw_only=True, tag="dead_letter"):
    """An event that could not be handled (or delivered), kept with why.

    ``original`` is the encoded original event, byte for byte, so it can be replayed.
    """

    topic: str
    group: str | None
    reason: str
    error: str
    attempts: int
    original_event_id: str
    original_type: str
    original: bytes


@dataclass(frozen=True, slots=True)
class _CheckedFields:
    """The fields of one payload type that ``Payload.__post_init__`` checks, by kind."""

    decimals: tuple[str, ...]
    optional_decimals: tuple[str, ...]
    timestamps: tuple[str, ...]


_CHECKED_FIELDS: dict[type[Payload], _CheckedFields] = {}


def _learn_fields(cls: type[Payload]) -> _CheckedFields:
    """Read ``cls``'s annotations, once per payload type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in msgspec.structs.fields(cls)]
    learned = _CheckedFields(
        decimals=tuple(n for n in names if hints[n] is Decimal),
        optional_decimals=tuple(n for n in names if hints[n] == Decimal | None),
        timestamps=tuple(n for n in names if hints[n] is datetime),
    )
    _CHECKED_FIELDS[cls] = learned
    return learned


AnyPayload: TypeAlias = (
    OrderSubmitted
    | OrderCancelRequested
    | OrderAmendRequested
    | OrderAccepted
    | OrderRejected
    | OrderPartiallyFilled
    | OrderFilled
    | OrderCanceled
    | OrderCancelRejected
    | OrderReplaceRejected
    | OrderExpired
    | OrderReplaced
    | PositionUpdated
    | PriceUpdate
    | PriceBatch
    | CandleClosed
    | DeadLettered
)


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The envelope every event travels in. Untracked by the garbage collector, like its
    payload (see :class:`Payload`)."""

    id: str
    occurred_at: UtcDatetime
    correlation_id: str
    causation_id: str | None = None
    account_id: str | None = None
    payload: AnyPayload

    def __post_init__(self) -> None:
        require_utc(self.occurred_at, field="occurred_at")

    @property
    def type(self) -> str:
        return event_type(self.payload)


def event_type(payload: Payload) -> str:
    tag = type(payload).__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{type(payload).__name__} has no event type tag")
    return tag


def new_event(
    payload: AnyPayload,
    *,
    occurred_at: datetime,
    correlation_id: str,
    causation_id: str | None = None,
    account_id: str | None = None,
) -> Event:
    """Build an event with a fresh time-ordered id."""
    return Event(
        id=new_id(),
        occurred_at=occurred_at,
        correlation_id=correlation_id,
        causation_id=causation_id,
        account_id=account_id,
        payload=payload,
    )


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | bytearray | memoryview) -> Event:
    """Decode bytes made by :func:`encode_event`; raises ``msgspec.ValidationError`` on junk."""
    return _decoder.decode(data)

"""What a user's stream carries: one JSON object per order or position event.

A message is ``{"id", "type", "event_id", "account_id", "correlation_id", "occurred_at",
"data"}``: ``id`` is the owner's message number (1, 2, 3, ... per owner, handed out by the
replay buffer), ``type`` the event type (``order.filled``, ``position.updated``, ...),
``occurred_at`` ISO 8601 in UTC (``...Z``) and ``data`` the event's payload fields with
decimals as strings (exact: never a float) and timestamps as ISO 8601 UTC.

The body is encoded before its id is known: :func:`notification_body` leaves ``id`` out and
the append script puts it first (``{"id":N,`` + the body's fields), so the stored message, the
published one and the replayed one are the same bytes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

from tradeloom.domain.events import (
    Event,
    OrderAccepted,
    OrderAmendRequested,
    OrderCanceled,
    OrderCancelRejected,
    OrderCancelRequested,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderReplaced,
    OrderReplaceRejected,
    OrderSubmitted,
    Payload,
    PositionUpdated,
    UtcDatetime,
)

CHANNEL_PREFIX = "notifications:"


class Kind(StrEnum):
    """The ``kind`` label of ``notifications_sent``."""

    ORDER = "order"
    POSITION = "position"


_KINDS: dict[type[Payload], Kind] = {
    OrderSubmitted: Kind.ORDER,
    OrderCancelRequested: Kind.ORDER,
    OrderAmendRequested: Kind.ORDER,
    OrderAccepted: Kind.ORDER,
    OrderRejected: Kind.ORDER,
    OrderPartiallyFilled: Kind.ORDER,
    OrderFilled: Kind.ORDER,
    OrderCanceled: Kind.ORDER,
    OrderCancelRejected: Kind.ORDER,
    OrderExpired: Kind.ORDER,
    OrderReplaced: Kind.ORDER,
    OrderReplaceRejected: Kind.ORDER,
    PositionUpdated: Kind.POSITION,
}


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a user's stream, as stored, published and replayed."""

    id: int
    type: str
    event_id: str
    account_id: str
    correlation_id: str
    occurred_at: UtcDatetime
    data: dict[str, Any]


class _Body(msgspec.Struct, frozen=True, kw_only=True):
    """A :class:`Notification` before the append script gives it an id."""

    type: str
    event_id: str
    account_id: str
    correlation_id: str
    occurred_at: UtcDatetime
    data: dict[str, Any]


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(Notification)


def user_channel(owner: str) -> str:
    """The pub/sub channel of one user's messages (the web tier subscribes to it)."""
    return CHANNEL_PREFIX + owner


def kind_of(event: Event) -> Kind | None:
    """``order`` or ``position`` for an event users are told about; None for any other."""
    return _KINDS.get(type(event.payload))


def notification_body(event: Event, account_id: str) -> bytes:
    """The message for ``event`` without its id: a JSON object, never empty."""
    data = msgspec.to_builtins(event.payload)
    data.pop("type", None)
    body = _Body(
        type=event.type,
        event_id=event.id,
        account_id=account_id,
        correlation_id=event.correlation_id,
        occurred_at=event.occurred_at,
        data=data,
    )
    return _encoder.encode(body)


def with_id(body: bytes | str, message_id: int) -> bytes:
    """The stored message: ``body`` with ``"id"`` as its first field (the append script's
    Python twin; its Lua twin builds the same bytes)."""
    text = body.decode() if isinstance(body, bytes) else body
    return f'{{"id":{message_id},{text[1:]}'.encode()


def decode_notification(raw: bytes) -> Notification:
    """Decode a stored or published message; raises ``msgspec.DecodeError`` on junk."""
    return _decoder.decode(raw)


def encode_notification(message: Notification) -> bytes:
    return _encoder.encode(message)

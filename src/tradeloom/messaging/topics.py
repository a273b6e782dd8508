"""The topics of the platform, with the durability and retention each one needs.

This is ARCHITECTURE.md's topics table in code. Adapters read it to create streams (NATS) or
to size in-memory retention. ``replicas`` is the replica count a clustered deployment should
use; an adapter never asks for more replicas than its cluster has (see ``max_replicas``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class Durability(StrEnum):
    ACKED_BY_ALL = "acked_by_all"  # written to every replica before the publisher is answered
    LEADER_ACK = "leader_ack"  # loss tolerable: fewer replicas, the leader answers


class KeyKind(StrEnum):
    ACCOUNT = "account"
    SYMBOL = "symbol"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    key: KeyKind
    durability: Durability
    retention: timedelta
    replicas: int
    description: str


_DAY = timedelta(days=1)

ORDER_COMMANDS = Topic(
    "order.commands",
    KeyKind.ACCOUNT,
    Durability.ACKED_BY_ALL,
    7 * _DAY,
    3,
    "order.submitted plus cancel and amend requests, from the OMS to execution",
)
ORDER_EVENTS = Topic(
    "order.events",
    KeyKind.ACCOUNT,
    Durability.ACKED_BY_ALL,
    7 * _DAY,
    3,
    "order.accepted / partially_filled / filled / rejected / canceled / expired / replaced",
)
POSITION_UPDATED = Topic(
    "position.updated",
    KeyKind.ACCOUNT,
    Durability.ACKED_BY_ALL,
    7 * _DAY,
    3,
    "a position row changed after a fill",
)
MARKET_PRICE = Topic(
    "market.price",
    KeyKind.SYMBOL,
    Durability.LEADER_ACK,
    timedelta(hours=1),
    1,
    "normalized price updates; a lost update is superseded by the next one",
)
MARKET_CANDLES = Topic(
    "market.candles",
    KeyKind.SYMBOL,
    Durability.ACKED_BY_ALL,
    7 * _DAY,
    3,
    "candle.closed: a 1m, 5m or 1h bar that will not change any more",
)
AUDIT_EVENTS = Topic(
    "audit.events",
    KeyKind.NONE,
    Durability.ACKED_BY_ALL,
    30 * _DAY,
    3,
    "platform events that belong in the archive but on no other topic",
)
DEAD_LETTER = Topic(
    "dead_letter",
    KeyKind.ACCOUNT,
    Durability.ACKED_BY_ALL,
    30 * _DAY,
    3,
    "events that could not be handled or delivered, with the reason",
)

TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        ORDER_COMMANDS,
        ORDER_EVENTS,
        POSITION_UPDATED,
        MARKET_PRICE,
        MARKET_CANDLES,
        AUDIT_EVENTS,
        DEAD_LETTER,
    )
}


def topic(name: str) -> Topic:
    """Look a topic up by name; an unknown name is a programming error and raises KeyError."""
    try:
        return TOPICS[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {', '.join(sorted(TOPICS))}") from None

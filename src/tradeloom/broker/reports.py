"""What goes to a broker (requests) and what comes back (reports).

Every value here is immutable, exact (Decimal) and timestamped in aware UTC, so a report can
cross threads freely and be recorded and replayed byte for byte. Every request and report
names the order (the platform's ``order_id``) and the account it belongs to: the account is
the key the gateway keeps reports in order by.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

from tradeloom.domain.numbers import ZERO, exact
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import require_utc


def _make_exact(item: object, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Turn the named fields of a frozen dataclass into exact Decimals (None stays None for
    ``optional`` ones); raises InvalidNumber naming the field."""
    for name in required:
        object.__setattr__(item, name, exact(getattr(item, name), field=name))
    for name in optional:
        value = getattr(item, name)
        object.__setattr__(item, name, None if value is None else exact(value, field=name))


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitOrder:
    """Send a new order. The broker answers with accepted or rejected, then fills and so on."""

    order_id: str
    account_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None

    def __post_init__(self) -> None:
        _make_exact(self, ("quantity",), ("limit_price", "stop_price"))


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequest:
    """Cancel a working order; answered by canceled or cancel rejected."""

    order_id: str
    account_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AmendRequest:
    """New terms for a working order; a field left as None keeps its value."""

    order_id: str
    account_id: str
    quantity: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None

    def __post_init__(self) -> None:
        _make_exact(self, (), ("quantity", "limit_price", "stop_price"))


# -- reports ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerAccepted:
    order_id: str
    account_id: str
    broker_order_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerRejected:
    """The broker refused the order; ``code`` is machine-readable (``unknown_symbol``...)."""

    order_id: str
    account_id: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerFill:
    """One execution. ``fill_id`` is unique per broker; after it, ``cumulative_quantity`` is
    filled and ``leaves_quantity`` still works (zero: the order is complete)."""

    order_id: str
    account_id: str
    fill_id: str
    quantity: Decimal
    price: Decimal
    filled_at: datetime
    cumulative_quantity: Decimal
    leaves_quantity: Decimal
    fee: Decimal = ZERO

    def __post_init__(self) -> None:
        _make_exact(self, ("quantity", "price", "cumulative_quantity", "leaves_quantity", "fee"))
        require_utc(self.filled_at, field="filled_at")


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerCanceled:
    order_id: str
    account_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerCancelRejected:
    """A cancel that could not take effect, e.g. ``"too late to cancel"`` after the fill."""

    order_id: str
    account_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerExpired:
    order_id: str
    account_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerReplaced:
    """The order now works on these terms (all of them, not only the changed ones)."""

    order_id: str
    account_id: str
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None

    def __post_init__(self) -> None:
        _make_exact(self, ("quantity",), ("limit_price", "stop_price"))


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerReplaceRejected:
    order_id: str
    account_id: str
    reason: str


# -- the open-orders query ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenOrdersQuery:
    """Ask the broker which orders it still works. It has no terms (a broker connection
    answers for every account it trades); it exists so a recording can hold the question."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenOrders:
    """The broker's answer to :class:`OpenOrdersQuery`: the platform's ``order_id`` of every
    order it has accepted and not finished (not filled, canceled, rejected or expired), as of
    the moment it answered. An order missing here is unknown to the broker or finished."""

    order_ids: tuple[str, ...]


BrokerRequest: TypeAlias = SubmitOrder | CancelRequest | AmendRequest

BrokerReport: TypeAlias = (
    BrokerAccepted
    | BrokerRejected
    | BrokerFill
    | BrokerCanceled
    | BrokerCancelRejected
    | BrokerExpired
    | BrokerReplaced
    | BrokerReplaceRejected
)

REPORT_TYPES: tuple[type[BrokerReport], ...] = (
    BrokerAccepted,
    BrokerRejected,
    BrokerFill,
    BrokerCanceled,
    BrokerCancelRejected,
    BrokerExpired,
    BrokerReplaced,
    BrokerReplaceRejected,
)

# Which reports answer which request: the gateway resolves a waiting request with the first
# report of its order whose type is listed here. A submit is answered by anything that tells
# the order reached the venue (an IOC may be canceled at once; a fill may beat the ack).
ANSWERS: dict[type[BrokerRequest], tuple[type[BrokerReport], ...]] = {
    SubmitOrder: (BrokerAccepted, BrokerRejected, BrokerFill, BrokerCanceled, BrokerExpired),
    CancelRequest: (BrokerCanceled, BrokerCancelRejected),
    AmendRequest: (BrokerReplaced, BrokerReplaceRejected),
}

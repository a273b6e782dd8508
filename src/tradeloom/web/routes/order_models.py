"""The shapes of ``/api/orders``: what a request may send, and what the routes answer.

Requests are checked at this edge for shape, before anything reaches the OMS or a query:
identifiers against their patterns (junk such as a NUL, which PostgreSQL refuses in text, is a
422 naming the field, never a database error) and amounts against a plain decimal syntax and
bounds (see :data:`OrderAmount`). Whether the terms make an order (positive, on the lot and
tick grid, known symbol, risk) is the OMS's to say, with its own codes.

The answer models document the JSON the routes build themselves; the API fuzz test checks
the answers against them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tradeloom.domain.orders import OrderStatus, OrderType, Side, TimeInForce
from tradeloom.web.schemas import ApiModel, ExactDecimal
from tradeloom.web.trading import ACCOUNT_PATTERN, DecimalText, Timestamp

_ID = re.compile(r"[A-Za-z0-9._:-]+")
ID_PATTERN = f"^{_ID.pattern}$"
SYMBOL_PATTERN = r"^[!-~]+$"  # printable ASCII, no spaces
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"  # base64url
MAX_ID = 64


def is_id(text: str) -> bool:
    """Whether ``text`` has the shape of an order or client order id."""
    return len(text) <= MAX_ID and _ID.fullmatch(text) is not None


OrderId = Annotated[str, Path(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)]

# Amounts are exact decimal strings (or JSON integers) of a plain syntax, bounded before any
# arithmetic: "1e999999" or "1e30" would otherwise reach Decimal operations that overflow
# their context (a price off the tick grid is checked with a remainder). Zero, negative and
# off-grid values are left to the OMS, which refuses them with its own codes.
MAX_AMOUNT_TEXT = 40
AMOUNT_DIGITS = 12
AMOUNT_DECIMALS = 10
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _decimal_text(value: Any) -> Any:
    if isinstance(value, str) and (len(value) > MAX_AMOUNT_TEXT or not _DECIMAL.fullmatch(value)):
        raise ValueError('expected a decimal number as a string, e.g. "187.25"')
    return value


def _bounded_amount(value: Decimal) -> Decimal:
    """The amount in plain notation (``"1E+3"`` becomes ``1000``), within the bounds."""
    if value.is_zero():
        return Decimal(0)
    if value.adjusted() >= AMOUNT_DIGITS:
        raise ValueError(f"must be below 10^{AMOUNT_DIGITS}")
    if value != round(value, AMOUNT_DECIMALS):
        raise ValueError(f"at most {AMOUNT_DECIMALS} decimal places")
    return Decimal(format(value, "f"))


OrderAmount = Annotated[
    ExactDecimal,
    BeforeValidator(_decimal_text),
    AfterValidator(_bounded_amount),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": f"^{_DECIMAL.pattern}$",
                    "maxLength": MAX_AMOUNT_TEXT,
                    "examples": ["10", "187.25"],
                },
                {"type": "integer"},
            ]
        }
    ),
]


class PlaceOrderBody(ApiModel):
    symbol: str = Field(
        min_length=1,
        max_length=32,
        pattern=SYMBOL_PATTERN,
        examples=["AAPL"],
        description="an instrument of /api/market/symbols (any case)",
    )
    side: Side
    qty: OrderAmount = Field(description="a positive quantity on the symbol's lot grid")
    type: OrderType
    limit_price: OrderAmount | None = Field(
        None, description="limit and stop_limit orders; on the tick grid"
    )
    stop_price: OrderAmount | None = Field(
        None, description="stop and stop_limit orders; on the tick grid"
    )
    time_in_force: TimeInForce = TimeInForce.DAY
    client_order_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="your idempotency key: the same one again returns the first order",
    )
    account_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=ACCOUNT_PATTERN,
        description="default: your first account",
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "examples": [
                {
                    "symbol": "AAPL",
                    "side": "buy",
                    "qty": "10",
                    "type": "limit",
                    "limit_price": "187.25",
                    "time_in_force": "gtc",
                    "client_order_id": "my-order-42",
                },
                {"symbol": "MSFT", "side": "sell", "qty": "5", "type": "market"},
            ]
        }
    }

    @field_validator("symbol")
    @classmethod
    def _upper(cls, symbol: str) -> str:
        return symbol.upper()


class AmendOrderBody(ApiModel):
    qty: OrderAmount | None = Field(None, description="smaller than now")
    limit_price: OrderAmount | None = Field(None, description="for a buy, not higher than now")
    stop_price: OrderAmount | None = None

    model_config = ApiModel.model_config | {
        "json_schema_extra": {"examples": [{"qty": "5"}, {"limit_price": "186.90"}]}
    }

    @model_validator(mode="after")
    def _something_changes(self) -> AmendOrderBody:
        if self.qty is None and self.limit_price is None and self.stop_price is None:
            raise ValueError("give at least one of qty, limit_price, stop_price")
        return self


class OrderReceiptOut(BaseModel):
    order_id: str
    client_order_id: str
    status: OrderStatus
    correlation_id: str = Field(description="in every event and log line the request causes")


class OrderOut(BaseModel):
    order_id: str
    account_id: str
    client_order_id: str
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    qty: DecimalText
    filled_qty: DecimalText
    remaining_qty: DecimalText
    average_fill_price: DecimalText | None
    limit_price: DecimalText | None
    stop_price: DecimalText | None
    status: OrderStatus
    is_open: bool
    reason: str | None
    correlation_id: str
    submitted_at: Timestamp
    accepted_at: Timestamp | None
    last_fill_at: Timestamp | None
    closed_at: Timestamp | None
    updated_at: Timestamp


class OrderPageOut(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None = Field(description="pass as ``cursor`` for the next page")


class OrderEventOut(BaseModel):
    event_id: str
    type: str = Field(examples=["order.accepted"])
    occurred_at: Timestamp
    correlation_id: str
    applied: bool = Field(description="whether the order's state machine took the event")
    note: str | None
    data: dict[str, Any]


class OrderHistoryOut(BaseModel):
    order_id: str
    events: list[OrderEventOut]

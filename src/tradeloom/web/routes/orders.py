"""``/api/orders``: place, list, read, cancel and amend the caller's orders.

The sync/async seam of the order path: ``POST`` validates, risk-checks and persists the order
with its ``order.submitted`` event (the OMS command side) and answers **202** with status
``pending_new``; what execution does later reaches the user over ``/api/stream``. A repeated
``client_order_id`` answers **200** with the original order (nothing new is placed).

A command carries the request's correlation id (``X-Correlation-ID``), so its events and every
log line the request causes share it.

Reads come from the order read model (``oms.queries``), which lags the command side by the
projection's delay: an order just placed may take a moment to be listed. Every read and
command is scoped to the caller: another user's order id answers 404, as an unknown one does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from tradeloom.domain.commands import AmendOrder, CancelOrder, PlaceOrder
from tradeloom.domain.ids import new_id
from tradeloom.domain.order_view import OrderView
from tradeloom.oms.commands import OrderNotFound, OrderReceipt
from tradeloom.oms.queries import MAX_PAGE, InvalidQuery, OrderHistoryEntry, decode_cursor
from tradeloom.web.auth import AuthenticatedUser, rate_limit
from tradeloom.web.errors import ApiError
from tradeloom.web.json import json_object
from tradeloom.web.request_context import CorrelationId
from tradeloom.web.routes.order_models import (
    CURSOR_PATTERN,
    SYMBOL_PATTERN,
    AmendOrderBody,
    OrderHistoryOut,
    OrderId,
    OrderOut,
    OrderPageOut,
    OrderReceiptOut,
    PlaceOrderBody,
    is_id,
)
from tradeloom.web.trading import (
    ACCOUNT_PATTERN,
    IsoDateTime,
    Trading,
    documented,
    error_responses,
    utc_time,
)

OrderEntry = Annotated[AuthenticatedUser, Depends(rate_limit("orders"))]
Reader = Annotated[AuthenticatedUser, Depends(rate_limit("reads"))]


def receipt_json(receipt: OrderReceipt) -> dict[str, str]:
    return {
        "order_id": receipt.order_id,
        "client_order_id": receipt.client_order_id,
        "status": receipt.status.value,
        "correlation_id": receipt.correlation_id,
    }


def order_json(view: OrderView) -> dict[str, Any]:
    return {
        "order_id": view.order_id,
        "account_id": view.account_id,
        "client_order_id": view.client_order_id,
        "symbol": view.symbol,
        "side": view.side.value,
        "type": view.order_type.value,
        "time_in_force": view.time_in_force.value,
        "qty": view.quantity,
        "filled_qty": view.filled_quantity,
        "remaining_qty": view.remaining_quantity,
        "average_fill_price": view.average_fill_price,
        "limit_price": view.limit_price,
        "stop_price": view.stop_price,
        "status": view.status.value,
        "is_open": view.is_open,
        "reason": view.reason,
        "correlation_id": view.correlation_id,
        "submitted_at": view.submitted_at,
        "accepted_at": view.accepted_at,
        "last_fill_at": view.last_fill_at,
        "closed_at": view.closed_at,
        "updated_at": view.updated_at,
    }


def history_json(entry: OrderHistoryEntry) -> dict[str, Any]:
    return {
        "event_id": entry.event_id,
        "type": entry.event_type,
        "occurred_at": entry.occurred_at,
        "correlation_id": entry.correlation_id,
        "applied": entry.applied,
        "note": entry.note,
        "data": dict(entry.payload),
    }


def orders_router() -> APIRouter:
    router = APIRouter(prefix="/api/orders", tags=["orders"])

    @router.post(
        "",
        status_code=202,
        response_model=None,
        responses={
            202: documented(OrderReceiptOut, "accepted for execution: status pending_new"),
            200: documented(OrderReceiptOut, "a repeated client_order_id: the original order"),
            **error_responses(400, 403, 404, 409, 415),
        },
    )
    async def place_order(
        body: PlaceOrderBody,
        user: OrderEntry,
        trading: Trading,
        response: Response,
        correlation_id: CorrelationId,
    ) -> dict[str, str]:
        """Place an order: validated, risk-checked and persisted, then executed asynchronously
        (status changes arrive on ``/api/stream``). A refused order is not persisted."""
        account_id = await trading.account_for(user.username, body.account_id)
        receipt = await trading.orders.place(
            PlaceOrder(
                account_id=account_id,
                client_order_id=body.client_order_id or new_id(),
                symbol=body.symbol,
                side=body.side,
                order_type=body.type,
                quantity=body.qty,
                time_in_force=body.time_in_force,
                limit_price=body.limit_price,
                stop_price=body.stop_price,
                correlation_id=correlation_id,
                user_id=user.username,
            )
        )
        if not receipt.created:
            response.status_code = 200
        response.headers["X-Correlation-ID"] = receipt.correlation_id
        return receipt_json(receipt)

    @router.get(
        "",
        response_model=None,
        responses={200: documented(OrderPageOut, "a page of your orders"), **error_responses(400)},
    )
    async def list_orders(
        user: Reader,
        trading: Trading,
        status: Literal["open", "closed", "all"] = "all",
        symbol: Annotated[
            str | None, Query(min_length=1, max_length=32, pattern=SYMBOL_PATTERN)
        ] = None,
        account_id: Annotated[
            str | None, Query(min_length=1, max_length=64, pattern=ACCOUNT_PATTERN)
        ] = None,
        since: IsoDateTime | None = None,
        until: IsoDateTime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        cursor: Annotated[
            str | None, Query(min_length=1, max_length=512, pattern=CURSOR_PATTERN)
        ] = None,
    ) -> dict[str, Any]:
        """Your orders submitted in ``[since, until)``, newest first, a page at a time: pass
        ``next_cursor`` as ``cursor``. Orders show here once the read model has them (it
        follows the command side by a moment)."""
        since, until = utc_time("since", since), utc_time("until", until)
        if since is not None and until is not None and since >= until:
            raise ApiError(422, "invalid_time", "since must be before until", {"field": "since"})
        page = await trading.order_queries.list(
            user.username,
            account_id=account_id,
            status=status,
            symbol=None if symbol is None else symbol.upper(),
            since=since,
            until=until,
            limit=limit,
            after=_checked_cursor(cursor),
        )
        return json_object(
            {"items": [order_json(v) for v in page.items], "next_cursor": page.next_cursor}
        )

    @router.get(
        "/{order_id}",
        response_model=None,
        responses={200: documented(OrderOut, "the order"), **error_responses(404)},
    )
    async def get_order(order_id: OrderId, user: Reader, trading: Trading) -> dict[str, Any]:
        view = await trading.order_queries.get(user.username, order_id)
        if view is None:
            raise _not_found(order_id)
        return json_object(order_json(view))

    @router.get(
        "/{order_id}/history",
        response_model=None,
        responses={200: documented(OrderHistoryOut, "the order's events"), **error_responses(404)},
    )
    async def order_history(order_id: OrderId, user: Reader, trading: Trading) -> dict[str, Any]:
        """Every event of the order, in the order the read model applied them."""
        entries = await trading.order_queries.history(user.username, order_id)
        if not entries:
            raise _not_found(order_id)
        return json_object({"order_id": order_id, "events": [history_json(e) for e in entries]})

    @router.delete(
        "/{order_id}",
        status_code=202,
        response_model=None,
        responses={
            202: documented(OrderReceiptOut, "cancel requested: status pending_cancel"),
            **error_responses(403, 404, 409),
        },
    )
    async def cancel_order(
        order_id: OrderId, user: OrderEntry, trading: Trading, correlation_id: CorrelationId
    ) -> dict[str, str]:
        """Ask for a cancel; ``order.canceled`` (or ``order.cancel_rejected``) follows."""
        account_id = await _account_of(trading, order_id)
        receipt = await trading.orders.cancel(
            CancelOrder(
                account_id=account_id,
                order_id=order_id,
                correlation_id=correlation_id,
                user_id=user.username,
            )
        )
        return receipt_json(receipt)

    @router.patch(
        "/{order_id}",
        status_code=202,
        response_model=None,
        responses={
            202: documented(OrderReceiptOut, "amend requested: status pending_replace"),
            **error_responses(400, 403, 404, 409, 415),
        },
    )
    async def amend_order(
        order_id: OrderId,
        body: AmendOrderBody,
        user: OrderEntry,
        trading: Trading,
        correlation_id: CorrelationId,
    ) -> dict[str, str]:
        """Ask for a smaller quantity or a less aggressive price; ``order.replaced`` (or
        ``order.replace_rejected``) follows. A change that would add exposure is refused
        (place a new order instead)."""
        account_id = await _account_of(trading, order_id)
        receipt = await trading.orders.amend(
            AmendOrder(
                account_id=account_id,
                order_id=order_id,
                correlation_id=correlation_id,
                quantity=body.qty,
                limit_price=body.limit_price,
                stop_price=body.stop_price,
                user_id=user.username,
            )
        )
        return receipt_json(receipt)

    return router


async def _account_of(trading: Trading, order_id: str) -> str:
    account_id = await trading.orders.account_of(order_id)
    if account_id is None:
        raise OrderNotFound(f"order {order_id} not found")
    return account_id


def _checked_cursor(cursor: str | None) -> str | None:
    """The cursor, once it is known to name a row: a forged one naming a time beyond the
    calendar or an id of another shape is refused here, before the query uses it."""
    if cursor is None:
        return None
    try:
        _, order_id = decode_cursor(cursor)
    except OverflowError:
        order_id = ""
    if not is_id(order_id):
        raise InvalidQuery(
            "the cursor is not one this service handed out", code="invalid_cursor", field="cursor"
        )
    return cursor


def _not_found(order_id: str) -> ApiError:
    return ApiError(404, "order_not_found", f"order {order_id} not found")

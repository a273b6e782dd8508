"""The OMS's own order state in the database (the command side of CQRS).

One row per order, written only inside the caller's transaction, so an order and the event
that announces it commit together (the outbox). ``client_order_id`` is unique per account:
that constraint is what makes placing an order idempotent even when two identical requests
race. Fills applied to an order are recorded by fill id, so applying one twice is detected.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.errors import DomainError
from tradeloom.domain.orders import Order, OrderStatus, OrderType, Side, TimeInForce
from tradeloom.storage.database import insert_if_absent
from tradeloom.storage.schema import order_fills, orders


class DuplicateClientOrderId(DomainError):
    """An order with this client order id already exists for the account."""

    code = "duplicate_client_order_id"


def _order(row: Row[tuple[object, ...]], fill_ids: set[str]) -> Order:
    m = row._mapping
    order = Order(
        order_id=m["order_id"],
        account_id=m["account_id"],
        client_order_id=m["client_order_id"],
        symbol=m["symbol"],
        side=Side(m["side"]),
        order_type=OrderType(m["order_type"]),
        quantity=m["quantity"],
        time_in_force=TimeInForce(m["time_in_force"]),
        created_at=m["created_at"],
        correlation_id=m["correlation_id"],
        limit_price=m["limit_price"],
        stop_price=m["stop_price"],
    )
    order.status = OrderStatus(m["status"])
    order.filled_quantity = m["filled_quantity"]
    order.average_fill_price = m["average_fill_price"]
    order.reason = m["reason"]
    before = m["status_before_request"]
    order.status_before_request = OrderStatus(before) if before else None
    order.fill_ids = fill_ids
    return order


def _values(order: Order) -> dict[str, object]:
    return {
        "status": order.status.value,
        "quantity": order.quantity,
        "limit_price": order.limit_price,
        "stop_price": order.stop_price,
        "filled_quantity": order.filled_quantity,
        "average_fill_price": order.average_fill_price,
        "reason": order.reason,
        "status_before_request": (
            order.status_before_request.value if order.status_before_request else None
        ),
    }


async def insert_order(conn: AsyncConnection, order: Order) -> None:
    """Insert a new order; raises :class:`DuplicateClientOrderId` if the id is taken. A taken
    client order id is detected by ``ON CONFLICT`` on the unique constraint, without a
    savepoint; the transaction stays usable."""
    row = {
        "order_id": order.order_id,
        "account_id": order.account_id,
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "time_in_force": order.time_in_force.value,
        "correlation_id": order.correlation_id,
        "created_at": order.created_at,
        "updated_at": order.created_at,
        **_values(order),
    }
    duplicate = DuplicateClientOrderId(
        f"client order id {order.client_order_id!r} is already used by this account"
    )
    try:
        inserted = await insert_if_absent(
            conn, orders, row, conflict_on=("account_id", "client_order_id")
        )
    except IntegrityError as exc:
        # Any other constraint (the order id itself, never reused: ids are fresh) is reported
        # the same way; unlike a client order id conflict, it leaves the transaction aborted.
        raise duplicate from exc
    if not inserted:
        raise duplicate


async def load_order(
    conn: AsyncConnection, order_id: str, *, for_update: bool = False
) -> Order | None:
    """The order as stored; ``for_update`` locks its row to the end of the transaction on
    PostgreSQL (SQLite has one writer at a time anyway), so two cancels cannot both pass."""
    query = select(orders).where(orders.c.order_id == order_id)
    row = (await conn.execute(query.with_for_update() if for_update else query)).first()
    if row is None:
        return None
    fills = await conn.execute(
        select(order_fills.c.fill_id).where(order_fills.c.order_id == order_id)
    )
    return _order(row, set(fills.scalars()))


async def find_by_client_order_id(
    conn: AsyncConnection, account_id: str, client_order_id: str
) -> Order | None:
    query = select(orders.c.order_id).where(
        orders.c.account_id == account_id, orders.c.client_order_id == client_order_id
    )
    order_id = (await conn.execute(query)).scalar()
    return None if order_id is None else await load_order(conn, order_id)


async def save_order(
    conn: AsyncConnection, order: Order, at: datetime, *, new_fill_id: str | None = None
) -> None:
    """Write the order's current state as of ``at``; with ``new_fill_id``, record that fill
    as applied (its primary key refuses the same fill twice)."""
    await conn.execute(
        update(orders)
        .where(orders.c.order_id == order.order_id)
        .values(**_values(order), updated_at=at)
    )
    if new_fill_id is not None:
        await conn.execute(
            insert(order_fills), {"order_id": order.order_id, "fill_id": new_fill_id}
        )

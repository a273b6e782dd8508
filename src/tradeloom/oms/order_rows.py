"""The OMS's order rows many at a time: what the order state updater reads and writes for a
batch of order events, in a fixed number of statements whatever the batch size.

:mod:`tradeloom.oms.repository` keeps the single-order functions of the command side. This
module serves :class:`tradeloom.oms.state.OrderStateUpdater`, which applies a batch in one
transaction:

1. :func:`record_processed` marks the batch's event ids processed by a consumer and answers
   which were new (one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``);
2. :func:`load_orders_for_update` reads and locks every order those events touch, each with
   the fill ids already applied to it (one locking select of the orders, one of their fills);
3. :func:`save_orders` writes the changed orders back and records the fills applied (one
   update, one insert).

On PostgreSQL each of these is one statement of one text whatever the number of rows (rows
travel as arrays through ``unnest`` and ``= ANY``), so it is prepared once per connection.
Decimals travel as ``numeric[]`` (exact) and times as ``timestamptz[]`` (aware UTC). SQLite
has no arrays and one writer at a time: the same semantics in plain statements.

Locks (PostgreSQL): event ids are inserted in ascending order, then orders are locked in
ascending ``order_id``, so two transactions that overlap (a redelivery taken by a second
process while the first still works) queue behind each other and never deadlock. A
transaction only waits for event ids before it holds any order lock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.orders import Order, OrderStatus, OrderType, Side, TimeInForce
from tradeloom.storage.schema import order_fills, orders, processed_events
from tradeloom.storage.statements import ByDialect

OrderFill = tuple[str, str]
"""(order id, fill id): a fill applied to an order."""

# What the state machine changes on an order; everything else is fixed when it is placed.
_STATE_COLUMNS = (
    "status",
    "quantity",
    "limit_price",
    "stop_price",
    "filled_quantity",
    "average_fill_price",
    "reason",
    "status_before_request",
)
_ARRAY_TYPES = {
    "quantity": "numeric",
    "limit_price": "numeric",
    "stop_price": "numeric",
    "filled_quantity": "numeric",
    "average_fill_price": "numeric",
    "reason": "text",
}


def order_from_row(row: Row[Any], fill_ids: set[str]) -> Order:
    """An ``orders`` row (all columns) as the domain's :class:`Order`."""
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


def order_state_values(order: Order) -> dict[str, Any]:
    """The order's state columns (:data:`_STATE_COLUMNS`), as stored."""
    before = order.status_before_request
    return {
        "status": order.status.value,
        "quantity": order.quantity,
        "limit_price": order.limit_price,
        "stop_price": order.stop_price,
        "filled_quantity": order.filled_quantity,
        "average_fill_price": order.average_fill_price,
        "reason": order.reason,
        "status_before_request": before.value if before else None,
    }


def _is_postgres(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


_RECORD_PROCESSED_PG = text(
    "INSERT INTO processed_events (consumer, event_id, processed_at)"
    " SELECT CAST(:consumer AS varchar), e.event_id, CAST(:processed_at AS timestamptz)"
    " FROM unnest(CAST(:event_ids AS varchar[])) AS e(event_id) ORDER BY e.event_id"
    " ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
)

# The other statements are built once with bound parameters and reused too: building one and
# deriving its cache key costs more here than PostgreSQL's part of running it (see
# tradeloom.storage.statements).
_RECORD_PROCESSED_SQLITE = (
    sqlite.insert(processed_events)
    .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
    .returning(processed_events.c.event_id)
)
_LOCK_ORDERS = ByDialect(
    lambda among: (
        select(orders)
        .where(among(orders.c.order_id, "ids"))
        .order_by(orders.c.order_id)
        .with_for_update()
    )
)
_FILLS_OF_ORDERS = ByDialect(
    lambda among: select(order_fills.c.order_id, order_fills.c.fill_id).where(
        among(order_fills.c.order_id, "ids")
    )
)


async def record_processed(
    conn: AsyncConnection, consumer: str, event_ids: Collection[str], at: datetime
) -> set[str]:
    """Record ``event_ids`` as processed by ``consumer`` as of ``at``; the ids that were not
    recorded before (an id given twice counts once). On PostgreSQL an id a concurrent
    transaction has just recorded is waited for, then is not new if that one committed."""
    if not event_ids:
        return set()
    if _is_postgres(conn):
        params = {"consumer": consumer, "processed_at": at, "event_ids": sorted(set(event_ids))}
        return set((await conn.execute(_RECORD_PROCESSED_PG, params)).scalars())
    rows = [{"consumer": consumer, "event_id": i, "processed_at": at} for i in set(event_ids)]
    return set((await conn.execute(_RECORD_PROCESSED_SQLITE, rows)).scalars())


async def load_orders_for_update(
    conn: AsyncConnection, order_ids: Collection[str]
) -> dict[str, Order]:
    """The stored orders among ``order_ids`` by id, each with the fill ids applied to it,
    locked to the end of the transaction in ``order_id`` order (PostgreSQL; SQLite has one
    writer). An unknown id is absent from the result."""
    wanted = sorted(set(order_ids))
    if not wanted:
        return {}
    rows = (await conn.execute(_LOCK_ORDERS(conn), {"ids": wanted})).all()
    if not rows:
        return {}
    found = [row.order_id for row in rows]
    fill_ids: dict[str, set[str]] = {order_id: set() for order_id in found}
    for order_id, fill_id in await conn.execute(_FILLS_OF_ORDERS(conn), {"ids": found}):
        fill_ids[order_id].add(fill_id)
    return {row.order_id: order_from_row(row, fill_ids[row.order_id]) for row in rows}


def _update_orders_pg() -> Any:
    """``UPDATE orders ... FROM unnest(arrays)``: every changed order in one statement."""
    names = ("order_id", *_STATE_COLUMNS)
    arrays = ", ".join(f"CAST(:{n} AS {_ARRAY_TYPES.get(n, 'varchar')}[])" for n in names)
    updates = ", ".join(f"{n} = v.{n}" for n in _STATE_COLUMNS)
    return text(
        f"UPDATE orders SET {updates}, updated_at = CAST(:updated_at AS timestamptz)"
        f" FROM unnest({arrays}) AS v({', '.join(names)}) WHERE orders.order_id = v.order_id"
    )


_UPDATE_ORDERS_PG = _update_orders_pg()
_INSERT_FILLS_PG = text(
    "INSERT INTO order_fills (order_id, fill_id) SELECT * FROM unnest("
    "CAST(:order_id AS varchar[]), CAST(:fill_id AS varchar[]))"
)
UPDATE_ORDER = (
    update(orders)
    .where(orders.c.order_id == bindparam("key_order_id"))
    .values({name: bindparam(name) for name in (*_STATE_COLUMNS, "updated_at")})
)
"""One order's state columns and ``updated_at``; parameters: ``key_order_id`` (the order),
the :func:`order_state_values` and ``updated_at``. Built once (it runs per cancel, amend and
SQLite batch)."""
_INSERT_FILLS = insert(order_fills)


async def save_orders(
    conn: AsyncConnection,
    changed: Sequence[Order],
    new_fills: Sequence[OrderFill],
    at: datetime,
) -> None:
    """Write each changed order's state as of ``at`` and record ``new_fills`` as applied. The
    orders must have been read by :func:`load_orders_for_update` in this transaction, and each
    fill be new to its order: ``order_fills``' primary key refuses a fill recorded twice (the
    transaction fails rather than apply it twice)."""
    ordered = sorted(changed, key=lambda order: order.order_id)
    if _is_postgres(conn):
        if ordered:
            rows = [{"order_id": o.order_id, **order_state_values(o)} for o in ordered]
            arrays = {name: [row[name] for row in rows] for name in rows[0]}
            await conn.execute(_UPDATE_ORDERS_PG, {**arrays, "updated_at": at})
        if new_fills:
            params = {"order_id": [f[0] for f in new_fills], "fill_id": [f[1] for f in new_fills]}
            await conn.execute(_INSERT_FILLS_PG, params)
        return
    if ordered:
        rows = [
            {"key_order_id": o.order_id, **order_state_values(o), "updated_at": at} for o in ordered
        ]
        await conn.execute(UPDATE_ORDER, rows)
    if new_fills:
        fills = [{"order_id": order_id, "fill_id": fill_id} for order_id, fill_id in new_fills]
        await conn.execute(_INSERT_FILLS, fills)

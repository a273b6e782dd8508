"""The OMS's own order state in the database (the command side of CQRS).

One row per order, written only inside the caller's transaction, so an order and the event
that announces it commit together (the outbox). ``client_order_id`` is unique per account:
that constraint is what makes placing an order idempotent even when two identical requests
race. Fills applied to an order are recorded by fill id, so applying one twice is detected.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import Event
from tradeloom.domain.orders import Order
from tradeloom.domain.time import require_utc
from tradeloom.oms.order_rows import UPDATE_ORDER, order_from_row, order_state_values
from tradeloom.storage.database import INSERT_CHUNK
from tradeloom.storage.outbox import (
    PG_INSERT_FROM_ARRAYS,
    PG_KEY_LOCK,
    PG_KEY_LOCK_IDS,
    Outbox,
)
from tradeloom.storage.schema import UtcDateTime, order_fills, orders


class DuplicateClientOrderId(DomainError):
    """An order with this client order id already exists for the account."""

    code = "duplicate_client_order_id"


# PostgreSQL: one statement text whatever the batch size, with the rows as arrays, so it is
# prepared once per connection. WITH ORDINALITY and ORDER BY keep the rows in the order given:
# of two rows with one client order id, the first is the one inserted.
_INSERT_ORDERS_PG_SQL = (
    "INSERT INTO orders (order_id, account_id, client_order_id, symbol, side, order_type,"
    " time_in_force, quantity, limit_price, stop_price, status, status_before_request,"
    " filled_quantity, average_fill_price, reason, correlation_id, created_at, updated_at)"
    " SELECT o.order_id, o.account_id, o.client_order_id, o.symbol, o.side, o.order_type,"
    " o.time_in_force, o.quantity, o.limit_price, o.stop_price, o.status,"
    " o.status_before_request, o.filled_quantity, o.average_fill_price, o.reason,"
    " o.correlation_id, o.created_at, o.created_at FROM unnest("
    "CAST(:order_id AS varchar[]), CAST(:account_id AS varchar[]),"
    " CAST(:client_order_id AS varchar[]), CAST(:symbol AS varchar[]),"
    " CAST(:side AS varchar[]), CAST(:order_type AS varchar[]),"
    " CAST(:time_in_force AS varchar[]), CAST(:quantity AS numeric[]),"
    " CAST(:limit_price AS numeric[]), CAST(:stop_price AS numeric[]),"
    " CAST(:status AS varchar[]), CAST(:status_before_request AS varchar[]),"
    " CAST(:filled_quantity AS numeric[]), CAST(:average_fill_price AS numeric[]),"
    " CAST(:reason AS text[]), CAST(:correlation_id AS varchar[]),"
    " CAST(:created_at AS timestamptz[])) WITH ORDINALITY AS o(order_id, account_id,"
    " client_order_id, symbol, side, order_type, time_in_force, quantity, limit_price,"
    " stop_price, status, status_before_request, filled_quantity, average_fill_price, reason,"
    " correlation_id, created_at, n) ORDER BY o.n"
    " ON CONFLICT (account_id, client_order_id) DO NOTHING RETURNING order_id"
)
_INSERT_ORDERS_PG = text(_INSERT_ORDERS_PG_SQL)

# PostgreSQL: the orders and the events of those inserted in ONE statement, which in
# autocommit is its own transaction: one round trip where BEGIN, the orders, the key locks,
# the events and COMMIT took five, and the outbox key locks are held only while it runs.
# Data-modifying CTEs run in an order their reads impose, and this one is spelled out:
# ``locked`` waits for every row of ``placed`` (its gate counts them; PostgreSQL also runs
# ``written``, referenced by no one, only after the main SELECT read all of ``placed``)
# before it takes the outbox key locks, and ``written`` waits for ``locked`` (its gate, a
# one-time filter under the sort) before it draws a sequence number. That gate is also the
# only reference to ``locked``: without it the locks would silently not be taken (a test
# holds a key lock to pin this). So, as in a transaction of separate statements, the orders'
# unique index is settled before any key lock is asked for (two batches racing over one
# client order id cannot deadlock through the locks), and no outbox row of a key is numbered
# before its lock is held. The events come with the id of their order (``event_order_id``);
# only those whose order was inserted are written, in the order given.
_PLACE_ORDERS_PG = text(
    f"WITH placed AS ({_INSERT_ORDERS_PG_SQL}),"
    f" locked AS (SELECT count({PG_KEY_LOCK}) AS n FROM {PG_KEY_LOCK_IDS}"
    " WHERE (SELECT count(*) FROM placed) >= 0),"
    " wanted AS (SELECT w.event_id FROM unnest(CAST(:event_order_id AS varchar[]),"
    " CAST(:event_id AS varchar[])) AS w(order_id, event_id)"
    " JOIN placed ON placed.order_id = w.order_id),"
    f" written AS ({PG_INSERT_FROM_ARRAYS}"
    " WHERE r.event_id IN (SELECT event_id FROM wanted)"
    " AND (SELECT n FROM locked) >= 0 ORDER BY r.n RETURNING 1)"
    " SELECT order_id FROM placed"
).bindparams(bindparam("outbox_created_at", type_=UtcDateTime()))


# Built once with bound parameters and reused: every cancel and amend reads its order, every
# placement looks its client order id up, and building a select and its cache key costs more
# here than PostgreSQL's part of running it.
_ORDER = select(orders).where(orders.c.order_id == bindparam("order_id"))
_ORDER_FOR_UPDATE = _ORDER.with_for_update()
_FILL_IDS = select(order_fills.c.fill_id).where(order_fills.c.order_id == bindparam("order_id"))
_ORDER_ID_BY_CLIENT_ORDER_ID = select(orders.c.order_id).where(
    orders.c.account_id == bindparam("account_id"),
    orders.c.client_order_id == bindparam("client_order_id"),
)
# SQLite: a chunk's rows go as the parameters of this one statement, which SQLAlchemy sends as
# one multi-row INSERT ("insertmanyvalues"): the statement a VALUES list built per chunk was,
# without building it (~40 us a row here).
_INSERT_ORDERS_SQLITE = (
    sqlite.insert(orders)
    .on_conflict_do_nothing(index_elements=["account_id", "client_order_id"])
    .returning(orders.c.order_id)
)


def _new_row(order: Order) -> dict[str, object]:
    return {
        "order_id": order.order_id,
        "account_id": order.account_id,
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "time_in_force": order.time_in_force.value,
        "correlation_id": order.correlation_id,
        "created_at": require_utc(order.created_at),
        **order_state_values(order),
    }


async def insert_orders(conn: AsyncConnection, new_orders: Sequence[Order]) -> set[str]:
    """Insert new orders unless their account already has an order with the same client
    order id; return the ids of those inserted (the others were not written). Of two orders
    of one (account, client order id) in ``new_orders``, the earlier is inserted. A taken
    client order id is skipped by ``ON CONFLICT``, without a savepoint: the transaction stays
    usable, and on PostgreSQL an uncommitted twin of another transaction is waited for first.
    Any other violation (an order id already stored) raises ``IntegrityError``.

    PostgreSQL: one statement for the whole batch, its rows in (account, client order id)
    order, so two batches racing over the same ids wait for each other in one order and never
    deadlock. SQLite: one multi-row statement per chunk."""
    if not new_orders:
        return set()
    if conn.dialect.name == "postgresql":
        ordered = sorted(new_orders, key=lambda o: (o.account_id, o.client_order_id))
        rows = [_new_row(order) for order in ordered]
        arrays = {name: [row[name] for row in rows] for name in rows[0]}
        return set((await conn.execute(_INSERT_ORDERS_PG, arrays)).scalars())
    inserted: set[str] = set()
    for start in range(0, len(new_orders), INSERT_CHUNK):
        chunk = new_orders[start : start + INSERT_CHUNK]
        rows = [{**_new_row(order), "updated_at": order.created_at} for order in chunk]
        inserted.update((await conn.execute(_INSERT_ORDERS_SQLITE, rows)).scalars())
    return inserted


async def place_orders(
    conn: AsyncConnection,
    new_orders: Sequence[Order],
    events: Sequence[tuple[str, str, Event]],
    outbox: Outbox,
) -> set[str]:
    """Insert the orders as :func:`insert_orders` does and, with them, record in ``outbox``
    the ``(topic, key, event)`` of each one inserted (``events[i]`` belongs to
    ``new_orders[i]``), in the order given; return the ids inserted.

    PostgreSQL: one statement (see ``_PLACE_ORDERS_PG``), so on a connection in autocommit
    (``Database.single_statement``) all of it commits in one round trip or none of it does.
    SQLite: the two steps in the caller's transaction."""
    if len(events) != len(new_orders):
        raise ValueError("one event per order")
    if not new_orders:
        return set()
    if conn.dialect.name != "postgresql":
        inserted = await insert_orders(conn, new_orders)
        await outbox.add_many(
            conn,
            [
                item
                for order, item in zip(new_orders, events, strict=True)
                if order.order_id in inserted
            ],
        )
        return inserted
    ordered = sorted(new_orders, key=lambda o: (o.account_id, o.client_order_id))
    rows = [_new_row(order) for order in ordered]
    values: dict[str, object] = {name: [row[name] for row in rows] for name in rows[0]}
    recorded = outbox.pg_parameters(events)
    recorded["event_order_id"] = [order.order_id for order in new_orders]
    if not values.keys().isdisjoint(recorded):  # a rename in one would silently clobber
        raise AssertionError(f"parameters of both parts: {values.keys() & recorded.keys()}")
    values.update(recorded)
    return set((await conn.execute(_PLACE_ORDERS_PG, values)).scalars())


async def load_order(
    conn: AsyncConnection, order_id: str, *, for_update: bool = False
) -> Order | None:
    """The order as stored; ``for_update`` locks its row to the end of the transaction on
    PostgreSQL (SQLite has one writer at a time anyway), so two cancels cannot both pass."""
    query = _ORDER_FOR_UPDATE if for_update else _ORDER
    row = (await conn.execute(query, {"order_id": order_id})).first()
    if row is None:
        return None
    fills = await conn.execute(_FILL_IDS, {"order_id": order_id})
    return order_from_row(row, set(fills.scalars()))


async def find_by_client_order_id(
    conn: AsyncConnection, account_id: str, client_order_id: str
) -> Order | None:
    values = {"account_id": account_id, "client_order_id": client_order_id}
    order_id = (await conn.execute(_ORDER_ID_BY_CLIENT_ORDER_ID, values)).scalar()
    return None if order_id is None else await load_order(conn, order_id)


async def save_order(conn: AsyncConnection, order: Order, at: datetime) -> None:
    """Write the order's current state as of ``at`` (a cancel or amend request; fills are
    applied in batches by :mod:`tradeloom.oms.order_rows`)."""
    values = {"key_order_id": order.order_id, **order_state_values(order), "updated_at": at}
    await conn.execute(UPDATE_ORDER, values)

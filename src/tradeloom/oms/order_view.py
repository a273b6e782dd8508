"""The order read model's tables: ``order_history`` (every order event, once) and
``order_views`` (one row per order), and the statements the projection, the queries and the
rebuild share.

The fold itself is pure and lives in :mod:`tradeloom.domain.order_view`; this module only
moves events and views in and out of the database, in few statements per batch: one that
records the history rows and reads back, for each order that gained events, its stored view
and a summary of the events recorded before (:func:`record_history`; on PostgreSQL one
statement, the insert in a CTE), one upsert of the views, and only for the orders whose view
cannot simply be continued, one select of their whole histories (:func:`load_histories`).

Concurrency: on PostgreSQL two transactions may touch one order at once (its commands and its
reports are consumed from two topics). :func:`lock_orders` takes a transaction-level advisory
lock per order, in a fixed order (so two batches never deadlock each other), before anything
of those orders is read or written: the second transaction then reads the first's committed
history and folds it too. On SQLite writers are serialised anyway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.events import Event, decode_event, encode_event
from tradeloom.domain.order_view import OrderView
from tradeloom.domain.orders import OrderStatus, OrderType, Side, TimeInForce
from tradeloom.storage.schema import order_history, order_views
from tradeloom.storage.statements import ByDialect

# Advisory locks of order views: (class, order) in PostgreSQL's two-key space, apart from the
# outbox's class and from the one-key locks.
_ORDER_LOCK_CLASS = 0x7472_6F76  # "trov"

_LOCK_ORDERS = text(
    "SELECT pg_advisory_xact_lock(:lock_class, k) FROM unnest(CAST(:keys AS integer[])) AS k"
)


def order_id_of(event: Event) -> str | None:
    """The order an event concerns, or None when it concerns no order."""
    order_id = getattr(event.payload, "order_id", None)
    return order_id if isinstance(order_id, str) else None


def history_row(event: Event, order_id: str, account_id: str) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "order_id": order_id,
        "account_id": account_id,
        "event_type": event.type,
        "occurred_at": event.occurred_at,
        "correlation_id": event.correlation_id,
        "event": encode_event(event),
    }


def _lock_key(order_id: str) -> int:
    """A stable signed 32-bit number for an order id; a collision only serialises two orders."""
    return int.from_bytes(hashlib.blake2b(order_id.encode(), digest_size=4).digest(), signed=True)


async def lock_orders(conn: AsyncConnection, order_ids: Collection[str]) -> None:
    """Hold every order's lock to the end of the transaction (PostgreSQL; SQLite has one
    writer). Keys are taken in ascending order, so lockers never wait on each other in a
    cycle."""
    if conn.dialect.name != "postgresql" or not order_ids:
        return
    keys = sorted({_lock_key(order_id) for order_id in order_ids})
    await conn.execute(_LOCK_ORDERS, {"lock_class": _ORDER_LOCK_CLASS, "keys": keys})


def _dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """What the read model held for an order before this batch: its view (None without
    one), how many of its events were recorded, and the latest ``occurred_at`` among them,
    submissions aside (None when there are none but submissions)."""

    view: OrderView | None
    event_count: int
    latest: datetime | None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What :func:`record_history` did: the ids of the events it recorded (the others were
    recorded already), and for each order that gained events, what was stored before."""

    new_ids: set[str]
    stored: dict[str, StoredOrder]


_HISTORY_COLUMNS = (
    "event_id",
    "order_id",
    "account_id",
    "event_type",
    "occurred_at",
    "correlation_id",
    "event",
)
_SUBMITTED = "order.submitted"


def _record_history_pg() -> Any:
    """The history rows as arrays, inserted in a CTE; the main query reads, for each order
    that gained events, its view and the summary of its history. Every part of one statement
    sees the same snapshot, so the summary counts only the events recorded before (the CTE's
    rows are invisible to it). One statement text whatever the batch size: prepared once per
    connection (a multi-row VALUES list would be prepared again for every size)."""
    view_columns = ", ".join(f"v.{c.name}" for c in order_views.columns if c.name != "order_id")
    return text(
        "WITH new AS (INSERT INTO order_history (event_id, order_id, account_id, event_type,"
        " occurred_at, correlation_id, event) SELECT * FROM unnest(CAST(:event_id AS varchar[]),"
        " CAST(:order_id AS varchar[]), CAST(:account_id AS varchar[]),"
        " CAST(:event_type AS varchar[]), CAST(:occurred_at AS timestamptz[]),"
        " CAST(:correlation_id AS varchar[]), CAST(:event AS bytea[]))"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id, order_id),"
        " gained AS (SELECT order_id, array_agg(event_id) AS new_ids FROM new GROUP BY order_id)"
        " SELECT g.new_ids, s.prior_count, s.prior_latest, v.order_id IS NOT NULL AS has_view,"
        f" g.order_id, {view_columns}"
        " FROM gained AS g CROSS JOIN LATERAL (SELECT count(*) AS prior_count,"
        f" max(h.occurred_at) FILTER (WHERE h.event_type <> '{_SUBMITTED}') AS prior_latest"
        " FROM order_history AS h WHERE h.order_id = g.order_id) AS s"
        " LEFT JOIN order_views AS v ON v.order_id = g.order_id"
    )


_RECORD_HISTORY_PG = _record_history_pg()


async def record_history(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> Recorded:
    """Insert the history rows not recorded yet (by event id); report which were new and
    what each order that gained events had stored before. Call it with the orders locked
    (:func:`lock_orders`), so nothing else records events of them meanwhile."""
    if not rows:
        return Recorded(set(), {})
    if conn.dialect.name == "postgresql":
        arrays = {name: [row[name] for row in rows] for name in _HISTORY_COLUMNS}
        recorded = Recorded(set(), {})
        for row in await conn.execute(_RECORD_HISTORY_PG, arrays):
            new_ids, prior_count, prior_latest, has_view, order_id = row[:5]
            recorded.new_ids.update(new_ids)
            view = _view_from_values(row[4:]) if has_view else None
            recorded.stored[order_id] = StoredOrder(view, prior_count, prior_latest)
        return recorded
    order_ids = {row["order_id"] for row in rows}
    summaries = await _summaries(conn, order_ids)
    views = await load_views(conn, order_ids)
    statement = (
        sqlite.insert(order_history)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(order_history.c.event_id)
    )
    new_ids = set((await conn.execute(statement, list(rows))).scalars())
    gained = {row["order_id"] for row in rows if row["event_id"] in new_ids}
    return Recorded(
        new_ids,
        {
            order_id: StoredOrder(views.get(order_id), *summaries.get(order_id, (0, None)))
            for order_id in gained
        },
    )


# Built once per dialect and reused (see tradeloom.storage.statements): the projection runs
# them for every batch.
_SUMMARIES = ByDialect(
    lambda among: (
        select(
            order_history.c.order_id,
            func.count(),
            func.max(order_history.c.occurred_at).filter(order_history.c.event_type != _SUBMITTED),
        )
        .where(among(order_history.c.order_id, "order_ids"))
        .group_by(order_history.c.order_id)
    )
)
_HISTORIES = ByDialect(
    lambda among: select(order_history.c.order_id, order_history.c.event).where(
        among(order_history.c.order_id, "order_ids")
    )
)


async def _summaries(
    conn: AsyncConnection, order_ids: Collection[str]
) -> dict[str, tuple[int, datetime | None]]:
    """Each order's count of recorded events and latest ``occurred_at`` (submissions aside);
    an order without events is absent."""
    rows = await conn.execute(_SUMMARIES(conn), {"order_ids": list(order_ids)})
    return {order_id: (count, at) for order_id, count, at in rows}


async def load_histories(
    conn: AsyncConnection, order_ids: Collection[str]
) -> dict[str, list[Event]]:
    """Every recorded event of each order (in no particular order: the fold sorts)."""
    histories: dict[str, list[Event]] = {order_id: [] for order_id in order_ids}
    if not order_ids:
        return histories
    for order_id, data in await conn.execute(_HISTORIES(conn), {"order_ids": list(order_ids)}):
        histories[order_id].append(decode_event(data))
    return histories


_VIEW_COLUMNS = tuple(column.name for column in order_views.columns)
_SIDES = {member.value: member for member in Side}
_ORDER_TYPES = {member.value: member for member in OrderType}
_TIMES_IN_FORCE = {member.value: member for member in TimeInForce}
_STATUSES = {member.value: member for member in OrderStatus}


def _view_values(view: OrderView) -> tuple[Any, ...]:
    """The view's column values, in the table's column order (:data:`_VIEW_COLUMNS`)."""
    return (
        view.order_id,
        view.account_id,
        view.client_order_id,
        view.symbol,
        view.side.value,
        view.order_type.value,
        view.time_in_force.value,
        view.quantity,
        view.filled_quantity,
        view.remaining_quantity,
        view.average_fill_price,
        view.limit_price,
        view.stop_price,
        view.status.value,
        view.is_open,
        view.reason,
        view.correlation_id,
        view.submitted_at,
        view.accepted_at,
        view.last_fill_at,
        view.closed_at,
        view.updated_at,
        view.event_count,
        view.last_event_id,
    )


def view_row(view: OrderView) -> dict[str, Any]:
    return dict(zip(_VIEW_COLUMNS, _view_values(view), strict=True))


def view_from_row(row: Mapping[Any, Any]) -> OrderView:
    return _view_from_values([row[name] for name in _VIEW_COLUMNS])


def _view_from_values(values: Sequence[Any]) -> OrderView:
    """The view of column values in the table's column order (enum members by dict look-up:
    calling the enum class costs several times more, once per row of every batch)."""
    return OrderView(
        values[0],
        values[1],
        values[2],
        values[3],
        _SIDES[values[4]],
        _ORDER_TYPES[values[5]],
        _TIMES_IN_FORCE[values[6]],
        values[7],
        values[8],
        values[9],
        values[10],
        values[11],
        values[12],
        _STATUSES[values[13]],
        bool(values[14]),
        values[15],
        values[16],
        values[17],
        values[18],
        values[19],
        values[20],
        values[21],
        values[22],
        values[23],
    )


async def load_views(conn: AsyncConnection, order_ids: Collection[str]) -> dict[str, OrderView]:
    """The stored views of these orders (an order without one is absent)."""
    if not order_ids:
        return {}
    query = select(order_views).where(order_views.c.order_id.in_(list(order_ids)))
    return {row.order_id: view_from_row(row._mapping) for row in await conn.execute(query)}


def _upsert_views_pg() -> Any:
    """``INSERT ... SELECT * FROM unnest(arrays) ON CONFLICT DO UPDATE``: every view of a batch
    in one statement of one text (executemany sends a message per row)."""
    types = {
        "quantity": "numeric", "filled_quantity": "numeric", "remaining_quantity": "numeric",
        "average_fill_price": "numeric", "limit_price": "numeric", "stop_price": "numeric",
        "is_open": "boolean", "reason": "text", "event_count": "integer",
        "submitted_at": "timestamptz", "accepted_at": "timestamptz",
        "last_fill_at": "timestamptz", "closed_at": "timestamptz", "updated_at": "timestamptz",
    }  # fmt: skip
    names = [column.name for column in order_views.columns]
    arrays = ", ".join(f"CAST(:{n} AS {types.get(n, 'varchar')}[])" for n in names)
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "order_id")
    return text(
        f"INSERT INTO order_views ({', '.join(names)}) SELECT * FROM unnest({arrays})"
        f" ON CONFLICT (order_id) DO UPDATE SET {updates}"
    )


_UPSERT_VIEWS_PG = _upsert_views_pg()


async def upsert_views(conn: AsyncConnection, views: Iterable[OrderView]) -> None:
    """Insert or overwrite each view's row, in one statement."""
    values = [_view_values(view) for view in views]
    if not values:
        return
    if conn.dialect.name == "postgresql":
        arrays = dict(zip(_VIEW_COLUMNS, map(list, zip(*values, strict=True)), strict=True))
        await conn.execute(_UPSERT_VIEWS_PG, arrays)
        return
    rows = [dict(zip(_VIEW_COLUMNS, row, strict=True)) for row in values]
    statement = _dialect_insert(conn, order_views)
    updated = {
        column.name: statement.excluded[column.name]
        for column in order_views.columns
        if column.name != "order_id"
    }
    await conn.execute(
        statement.on_conflict_do_update(index_elements=["order_id"], set_=updated), rows
    )


async def delete_views(conn: AsyncConnection, order_ids: Collection[str]) -> None:
    if order_ids:
        await conn.execute(delete(order_views).where(order_views.c.order_id.in_(list(order_ids))))

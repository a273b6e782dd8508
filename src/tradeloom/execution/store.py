"""Execution's two tables, a batch at a time: ``broker_orders`` (what was sent to the broker,
and whether the broker acknowledged and ended it) and ``broker_reports`` (which broker reports
already became events).

On PostgreSQL every statement here has ONE text whatever the batch size (rows go in as arrays
through ``unnest``, keys through ``= ANY``), so each is prepared once per connection. Rows are
written in key order, so two overlapping batches lock them in the same order and never
deadlock each other. SQLite (one writer, nothing to prepare) loops over plain statements.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import String, bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.events import Event
from tradeloom.domain.orders import Side
from tradeloom.storage.database import insert_if_absent
from tradeloom.storage.outbox import PG_INSERT_FROM_ARRAYS, PG_KEY_LOCK, PG_KEY_LOCK_IDS, Outbox
from tradeloom.storage.schema import UtcDateTime, broker_orders, broker_reports
from tradeloom.storage.statements import ByDialect


class Closing(StrEnum):
    """How an order execution sent came to an end (``broker_orders.closed_as``)."""

    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    NOT_SENT = "not_sent"  # reconciliation: claimed, never acknowledged, not at the broker
    VENUE_LOST = "venue_lost"  # reconciliation: acknowledged, then forgotten by the venue


@dataclass(frozen=True, slots=True)
class SentOrder:
    """What execution remembers of an order it sent: enough to describe its fills, and
    whether the broker acknowledged it and whether it ended."""

    order_id: str
    account_id: str
    symbol: str
    side: Side
    correlation_id: str
    causation_id: str
    acknowledged: bool = False
    closed: bool = False


@dataclass(slots=True)
class OrderMark:
    """What a batch learned of one order. Only what is still unknown is written: a first
    acknowledgement, a first closing, and a broker order id (the reports' one-statement path
    keeps a stored id; :func:`mark_orders` lets a given one replace it)."""

    broker_order_id: str | None = None
    acknowledged: bool = False
    closed_as: Closing | None = None


_CLAIM_COLUMNS = ("order_id", "account_id", "symbol", "side", "correlation_id", "causation_id")

_CLAIM_PG = text(
    "INSERT INTO broker_orders (order_id, account_id, symbol, side, correlation_id,"
    " causation_id, sent_at) SELECT o.*, CAST(:sent_at AS timestamptz) FROM unnest("
    "CAST(:order_id AS varchar[]), CAST(:account_id AS varchar[]), CAST(:symbol AS varchar[]),"
    " CAST(:side AS varchar[]), CAST(:correlation_id AS varchar[]),"
    " CAST(:causation_id AS varchar[])) AS o"
    " ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
)

_RECORD_REPORTS_PG_SQL = (
    "INSERT INTO broker_reports (report_id, order_id, received_at)"
    " SELECT r.*, CAST(:received_at AS timestamptz) FROM unnest("
    "CAST(:report_id AS varchar[]), CAST(:report_order_id AS varchar[])) AS r"
    " ON CONFLICT (report_id) DO NOTHING RETURNING report_id"
)
_RECORD_REPORTS_PG = text(_RECORD_REPORTS_PG_SQL)


def _mark_orders_pg(*, keep_stored_broker_id: bool) -> str:
    """The UPDATE of what batches learned of orders. Only rows it changes are written (a
    repeated report rewrites no row): an id given and kept, a first acknowledgement, a first
    closing."""
    if keep_stored_broker_id:
        broker_id = "COALESCE(broker_orders.broker_order_id, v.broker_order_id)"
        new_id = "broker_orders.broker_order_id IS NULL AND v.broker_order_id IS NOT NULL"
    else:
        broker_id = "COALESCE(v.broker_order_id, broker_orders.broker_order_id)"
        new_id = (
            "v.broker_order_id IS NOT NULL"
            " AND v.broker_order_id IS DISTINCT FROM broker_orders.broker_order_id"
        )
    return (
        f"UPDATE broker_orders SET broker_order_id = {broker_id},"
        " acknowledged_at = COALESCE(broker_orders.acknowledged_at,"
        " CASE WHEN v.acknowledged THEN CAST(:at AS timestamptz) END),"
        " closed_as = COALESCE(broker_orders.closed_as, v.closed_as),"
        " closed_at = COALESCE(broker_orders.closed_at,"
        " CASE WHEN v.closed_as IS NOT NULL THEN CAST(:at AS timestamptz) END)"
        " FROM unnest(CAST(:order_id AS varchar[]), CAST(:broker_order_id AS varchar[]),"
        " CAST(:acknowledged AS boolean[]), CAST(:closed_as AS varchar[]))"
        " AS v(order_id, broker_order_id, acknowledged, closed_as)"
        f" WHERE broker_orders.order_id = v.order_id AND ({new_id}"
        " OR (broker_orders.acknowledged_at IS NULL AND v.acknowledged)"
        " OR (broker_orders.closed_at IS NULL AND v.closed_as IS NOT NULL))"
    )


_MARK_ORDERS_PG = text(_mark_orders_pg(keep_stored_broker_id=False))

# PostgreSQL: a batch of reports in ONE statement, which in autocommit is its own transaction
# (one round trip where BEGIN, four statements and COMMIT took six): the reports' keys, the
# marks of their orders, the outbox key locks, and the events of the reports that are new.
# Its parts run in the order their reads impose (as ``oms.repository._PLACE_ORDERS_PG``,
# whose comment says why), the order of the transaction it replaces: the keys (``fresh``,
# read whole by the main SELECT, and gating ``marked`` besides), then the orders' row locks
# (``marked``), then the key locks (``locked``, gated on ``marked``: the other way round
# deadlocks against reconciliation's transaction), then the events (``written``, gated on
# ``locked``, which its gate alone runs), numbered in the order given. Tests hold a row lock
# and a key lock to pin the two gates. An event comes with the key of its report
# (``event_report_id``), written only if that key is new, or with NULL (a report that may
# repeat, a parked report): always written. The stored broker order id wins, since the first
# acknowledgement's is the one kept and a repeat may come in the batch.
_RECORD_BATCH_PG = text(
    f"WITH fresh AS ({_RECORD_REPORTS_PG_SQL}),"
    " marked AS ("
    + _mark_orders_pg(keep_stored_broker_id=True)
    + " AND (SELECT count(*) FROM fresh) >= 0 RETURNING 1),"
    f" locked AS (SELECT count({PG_KEY_LOCK}) AS n FROM {PG_KEY_LOCK_IDS}"
    " WHERE (SELECT count(*) FROM marked) >= 0),"
    " wanted AS (SELECT w.event_id FROM unnest(CAST(:event_report_id AS varchar[]),"
    " CAST(:event_id AS varchar[])) AS w(report_id, event_id)"
    " WHERE w.report_id IS NULL OR w.report_id IN (SELECT report_id FROM fresh)),"
    f" written AS ({PG_INSERT_FROM_ARRAYS}"
    " WHERE r.event_id IN (SELECT event_id FROM wanted)"
    " AND (SELECT n FROM locked) >= 0 ORDER BY r.n RETURNING 1)"
    " SELECT report_id FROM fresh"
).bindparams(bindparam("outbox_created_at", type_=UtcDateTime()))

# The other statements are built once with bound parameters and reused too: building one and
# deriving its cache key costs more here than PostgreSQL's part of running it (see
# tradeloom.storage.statements).
_FORGET_ORDERS = ByDialect(
    lambda among: delete(broker_orders).where(among(broker_orders.c.order_id, "order_ids"))
)
_SENT_COLUMNS = (
    broker_orders.c.order_id,
    broker_orders.c.account_id,
    broker_orders.c.symbol,
    broker_orders.c.side,
    broker_orders.c.correlation_id,
    broker_orders.c.causation_id,
    broker_orders.c.acknowledged_at.is_not(None),
    broker_orders.c.closed_at.is_not(None),
)
_SENT_ORDERS = ByDialect(
    lambda among: select(*_SENT_COLUMNS).where(among(broker_orders.c.order_id, "order_ids"))
)
# Served by the partial index of open rows; in a fixed order, so outcomes are published in it.
_OPEN_ORDERS = (
    select(*_SENT_COLUMNS)
    .where(broker_orders.c.closed_at.is_(None))
    .order_by(broker_orders.c.sent_at, broker_orders.c.order_id)
)
_MARK_ORDER_SQLITE = (
    update(broker_orders)
    .where(broker_orders.c.order_id == bindparam("key_order_id"))
    .values(
        broker_order_id=func.coalesce(
            bindparam("broker_order_id", type_=String()), broker_orders.c.broker_order_id
        ),
        acknowledged_at=func.coalesce(
            broker_orders.c.acknowledged_at, bindparam("acknowledged_at", type_=UtcDateTime())
        ),
        closed_as=func.coalesce(broker_orders.c.closed_as, bindparam("closed_as", type_=String())),
        closed_at=func.coalesce(
            broker_orders.c.closed_at, bindparam("closed_at", type_=UtcDateTime())
        ),
    )
)


async def claim_orders(
    conn: AsyncConnection, rows: Sequence[Mapping[str, str]], sent_at: datetime
) -> set[str]:
    """Insert a ``broker_orders`` row for each of ``rows`` (``_CLAIM_COLUMNS``, distinct order
    ids) unless the order already has one; return the order ids inserted, i.e. the orders
    this transaction may send. A racing twin on PostgreSQL is waited for, then skipped."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        ordered = sorted(rows, key=lambda row: row["order_id"])
        arrays = {name: [row[name] for row in ordered] for name in _CLAIM_COLUMNS}
        result = await conn.execute(_CLAIM_PG, {**arrays, "sent_at": sent_at})
        return set(result.scalars())
    claimed: set[str] = set()
    for row in rows:
        if await insert_if_absent(conn, broker_orders, {**row, "sent_at": sent_at}):
            claimed.add(row["order_id"])
    return claimed


async def forget_orders(conn: AsyncConnection, order_ids: Collection[str]) -> None:
    """Delete the claims of orders that never reached the broker."""
    if order_ids:
        await conn.execute(_FORGET_ORDERS(conn), {"order_ids": list(order_ids)})


async def load_sent_orders(
    conn: AsyncConnection, order_ids: Collection[str]
) -> dict[str, SentOrder]:
    """The orders among ``order_ids`` that were sent, by order id."""
    if not order_ids:
        return {}
    rows = await conn.execute(_SENT_ORDERS(conn), {"order_ids": list(order_ids)})
    return {row[0]: _sent_order(row) for row in rows}


async def load_open_orders(conn: AsyncConnection) -> list[SentOrder]:
    """Every order sent and not closed, oldest claim first: what execution believes live."""
    return [_sent_order(row) for row in await conn.execute(_OPEN_ORDERS)]


def _sent_order(row: Sequence[Any]) -> SentOrder:
    order_id, account, symbol, side, correlation, causation, acknowledged, closed = row
    return SentOrder(
        order_id,
        account,
        symbol,
        Side(side),
        correlation,
        causation,
        bool(acknowledged),
        bool(closed),
    )


async def record_report_ids(
    conn: AsyncConnection, keys: Mapping[str, str], received_at: datetime
) -> set[str]:
    """Insert ``report_id → order_id`` pairs not recorded yet; return the report ids that
    were new (the reports to publish)."""
    if not keys:
        return set()
    if conn.dialect.name == "postgresql":
        ordered = sorted(keys)
        arrays = {"report_id": ordered, "report_order_id": [keys[key] for key in ordered]}
        result = await conn.execute(_RECORD_REPORTS_PG, {**arrays, "received_at": received_at})
        return set(result.scalars())
    fresh: set[str] = set()
    for key, order_id in keys.items():
        row = {"report_id": key, "order_id": order_id, "received_at": received_at}
        if await insert_if_absent(conn, broker_reports, row):
            fresh.add(key)
    return fresh


async def mark_orders(conn: AsyncConnection, marks: Mapping[str, OrderMark], at: datetime) -> None:
    """Write what was learned of each order (``order_id → mark``), stamped ``at``: an
    acknowledgement or a closing already stored is kept (the first one wins)."""
    if not marks:
        return
    ordered = sorted(marks)
    if conn.dialect.name == "postgresql":
        await conn.execute(_MARK_ORDERS_PG, {**_mark_arrays(marks), "at": at})
        return
    rows = [
        {
            "key_order_id": key,
            "broker_order_id": marks[key].broker_order_id,
            "acknowledged_at": at if marks[key].acknowledged else None,
            "closed_as": _value(marks[key].closed_as),
            "closed_at": at if marks[key].closed_as is not None else None,
        }
        for key in ordered
    ]
    await conn.execute(_MARK_ORDER_SQLITE, rows)


async def record_batch_pg(
    conn: AsyncConnection,
    keys: Mapping[str, str],
    marks: Mapping[str, OrderMark],
    events: Sequence[tuple[str | None, tuple[str, str, Event]]],
    outbox: Outbox,
    at: datetime,
) -> set[str]:
    """PostgreSQL, on a connection in autocommit (``Database.single_statement``): in one
    statement, record the ``report_id → order_id`` pairs not recorded yet, write ``marks``
    (the stored broker order id kept), and put in ``outbox`` each ``(report key or None,
    item)`` of ``events``, in order, whose key was new (None: always); return the new keys."""
    ordered = sorted(keys)
    values: dict[str, object] = {
        "report_id": ordered,
        "report_order_id": [keys[key] for key in ordered],
        "received_at": at,
        **_mark_arrays(marks),
        "at": at,
    }
    recorded = outbox.pg_parameters([item for _, item in events])
    recorded["event_report_id"] = [key for key, _ in events]
    if not values.keys().isdisjoint(recorded):  # a rename in one would silently clobber
        raise AssertionError(f"parameters of both parts: {values.keys() & recorded.keys()}")
    values.update(recorded)
    return set((await conn.execute(_RECORD_BATCH_PG, values)).scalars())


def _mark_arrays(marks: Mapping[str, OrderMark]) -> dict[str, list[Any]]:
    # In key order, which an index scan keeps: overlapping batches then lock their rows in
    # one order. (A plan that hashes a very large batch locks in storage order; a deadlock
    # there fails one side, whose caller retries.)
    ordered = sorted(marks)
    return {
        "order_id": ordered,
        "broker_order_id": [marks[key].broker_order_id for key in ordered],
        "acknowledged": [marks[key].acknowledged for key in ordered],
        "closed_as": [_value(marks[key].closed_as) for key in ordered],
    }


def _value(closing: Closing | None) -> str | None:
    return None if closing is None else closing.value


def claim_row(
    order_id: str, account_id: str, symbol: str, side: Side, correlation_id: str, cause: str
) -> dict[str, Any]:
    """The ``broker_orders`` values :func:`claim_orders` takes for one order."""
    return {
        "order_id": order_id,
        "account_id": account_id,
        "symbol": symbol,
        "side": side.value,
        "correlation_id": correlation_id,
        "causation_id": cause,
    }

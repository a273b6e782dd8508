"""Execution's two tables, a batch at a time: ``broker_orders`` (what was sent to the broker)
and ``broker_reports`` (which broker reports already became events).

On PostgreSQL every statement here has ONE text whatever the batch size (rows go in as arrays
through ``unnest``, keys through ``= ANY``), so each is prepared once per connection. Rows are
written in key order, so two overlapping batches lock them in the same order and never
deadlock each other. SQLite (one writer, nothing to prepare) loops over plain statements.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.orders import Side
from tradeloom.storage.database import insert_if_absent
from tradeloom.storage.schema import broker_orders, broker_reports
from tradeloom.storage.statements import ByDialect


@dataclass(frozen=True, slots=True)
class SentOrder:
    """What execution remembers of an order it sent: enough to describe its fills."""

    order_id: str
    account_id: str
    symbol: str
    side: Side
    correlation_id: str
    causation_id: str


_CLAIM_COLUMNS = ("order_id", "account_id", "symbol", "side", "correlation_id", "causation_id")

_CLAIM_PG = text(
    "INSERT INTO broker_orders (order_id, account_id, symbol, side, correlation_id,"
    " causation_id, sent_at) SELECT o.*, CAST(:sent_at AS timestamptz) FROM unnest("
    "CAST(:order_id AS varchar[]), CAST(:account_id AS varchar[]), CAST(:symbol AS varchar[]),"
    " CAST(:side AS varchar[]), CAST(:correlation_id AS varchar[]),"
    " CAST(:causation_id AS varchar[])) AS o"
    " ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
)

_RECORD_REPORTS_PG = text(
    "INSERT INTO broker_reports (report_id, order_id, received_at)"
    " SELECT r.*, CAST(:received_at AS timestamptz) FROM unnest("
    "CAST(:report_id AS varchar[]), CAST(:order_id AS varchar[])) AS r"
    " ON CONFLICT (report_id) DO NOTHING RETURNING report_id"
)

_SET_BROKER_ORDER_IDS_PG = text(
    "UPDATE broker_orders SET broker_order_id = v.broker_order_id FROM unnest("
    "CAST(:order_id AS varchar[]), CAST(:broker_order_id AS varchar[]))"
    " AS v(order_id, broker_order_id) WHERE broker_orders.order_id = v.order_id"
)

# The other statements are built once with bound parameters and reused too: building one and
# deriving its cache key costs more here than PostgreSQL's part of running it (see
# tradeloom.storage.statements).
_FORGET_ORDERS = ByDialect(
    lambda among: delete(broker_orders).where(among(broker_orders.c.order_id, "order_ids"))
)
_SENT_ORDERS = ByDialect(
    lambda among: select(
        broker_orders.c.order_id,
        broker_orders.c.account_id,
        broker_orders.c.symbol,
        broker_orders.c.side,
        broker_orders.c.correlation_id,
        broker_orders.c.causation_id,
    ).where(among(broker_orders.c.order_id, "order_ids"))
)
_SET_BROKER_ORDER_ID_SQLITE = (
    update(broker_orders)
    .where(broker_orders.c.order_id == bindparam("key_order_id"))
    .values(broker_order_id=bindparam("broker_order_id"))
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
    return {
        order_id: SentOrder(order_id, account, symbol, Side(side), correlation, causation)
        for order_id, account, symbol, side, correlation, causation in rows
    }


async def record_report_ids(
    conn: AsyncConnection, keys: Mapping[str, str], received_at: datetime
) -> set[str]:
    """Insert ``report_id → order_id`` pairs not recorded yet; return the report ids that
    were new (the reports to publish)."""
    if not keys:
        return set()
    if conn.dialect.name == "postgresql":
        ordered = sorted(keys)
        arrays = {"report_id": ordered, "order_id": [keys[key] for key in ordered]}
        result = await conn.execute(_RECORD_REPORTS_PG, {**arrays, "received_at": received_at})
        return set(result.scalars())
    fresh: set[str] = set()
    for key, order_id in keys.items():
        row = {"report_id": key, "order_id": order_id, "received_at": received_at}
        if await insert_if_absent(conn, broker_reports, row):
            fresh.add(key)
    return fresh


async def set_broker_order_ids(conn: AsyncConnection, ids: Mapping[str, str]) -> None:
    """Store the broker's id of each order (``order_id → broker_order_id``)."""
    if not ids:
        return
    if conn.dialect.name == "postgresql":
        ordered = sorted(ids)
        arrays = {"order_id": ordered, "broker_order_id": [ids[key] for key in ordered]}
        await conn.execute(_SET_BROKER_ORDER_IDS_PG, arrays)
        return
    rows = [{"key_order_id": key, "broker_order_id": value} for key, value in ids.items()]
    await conn.execute(_SET_BROKER_ORDER_ID_SQLITE, rows)


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

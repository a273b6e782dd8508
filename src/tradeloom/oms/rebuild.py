"""Rebuilding the order read model from its history: what ``tradeloom orders rebuild`` runs.

Every order's view is folded again from ``order_history`` (the same pure fold the projection
uses) and compared field by field with the live ``order_views`` row. A live row without any
history, or a history whose order has no live row, is a difference too.

It scales with the history, not with memory: order ids are walked in chunks (keyset on the
order id), each chunk's histories and live rows are read with one query each, and only the
ids of the orders that differ are kept, with at most ``max_reported`` field differences for
display.

The comparison reads one snapshot of both tables, so it is exact even while the projection
runs. Repair (unless only checking) is one write transaction: each differing order is folded again
from its history as it stands then, under its lock on PostgreSQL, so a projection running
meanwhile and the rebuild never overwrite each other with a stale fold. Its view is upserted,
or deleted when its history holds no submission.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import Select, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.order_view import OrderView, fold_order
from tradeloom.oms.order_view import (
    delete_views,
    load_histories,
    load_views,
    lock_orders,
    upsert_views,
)
from tradeloom.storage.database import Database
from tradeloom.storage.schema import order_history, order_views

Progress = Callable[[int, int], None]
"""Called after each chunk with (orders compared so far, orders in all)."""

ROW = "(row)"
PRESENT, ABSENT = "present", "absent"


@dataclass(frozen=True, slots=True)
class FieldDifference:
    """One field of one order whose live value differs from the rebuilt one. A missing row
    is reported as field ``(row)`` with values ``present`` / ``absent``."""

    order_id: str
    field: str
    live: object
    rebuilt: object


@dataclass(slots=True)
class RebuildReport:
    """``orders`` compared; the ids of those that differ; their field differences (the
    first ``max_reported`` of ``difference_count``); whether the live views were repaired."""

    orders: int = 0
    differing_orders: list[str] = field(default_factory=list)
    differences: list[FieldDifference] = field(default_factory=list)
    difference_count: int = 0
    repaired: bool = False

    @property
    def equal(self) -> bool:
        return not self.differing_orders


def compare_views(
    order_id: str, live: OrderView | None, rebuilt: OrderView | None
) -> list[FieldDifference]:
    """The differences between a live view and a rebuilt one (either may be absent)."""
    if live is None or rebuilt is None:
        if live is rebuilt:
            return []
        return [
            FieldDifference(
                order_id,
                ROW,
                ABSENT if live is None else PRESENT,
                ABSENT if rebuilt is None else PRESENT,
            )
        ]
    return [
        FieldDifference(order_id, f.name, getattr(live, f.name), getattr(rebuilt, f.name))
        for f in fields(OrderView)
        if getattr(live, f.name) != getattr(rebuilt, f.name)
    ]


async def rebuild_order_views(
    database: Database,
    *,
    repair: bool,
    chunk_size: int = 500,
    max_reported: int = 1000,
    progress: Progress | None = None,
) -> RebuildReport:
    """Compare every order's live view with its rebuilt one; with ``repair``, make the live
    views equal to the rebuilt ones in one transaction."""
    report = RebuildReport()
    async with database.connect() as conn:
        await _one_snapshot(conn)
        total = await _count(conn, _history_ids) + await _count(conn, _orphan_ids)
        for ids_query in (_history_ids, _orphan_ids):
            async for chunk in _chunks(conn, ids_query, chunk_size):
                await _compare_chunk(conn, chunk, report, max_reported)
                if progress is not None:
                    progress(report.orders, total)
    if repair and report.differing_orders:
        async with database.transaction() as conn:
            for order_ids in _slices(report.differing_orders, chunk_size):
                await _repair_chunk(conn, order_ids)
        report.repaired = True
    return report


async def _one_snapshot(conn: AsyncConnection) -> None:
    """Read both tables as of one moment, so a projection committing meanwhile (history and
    view together) cannot show up as a difference. SQLite's read transaction is a snapshot
    already; PostgreSQL's READ COMMITTED would take a new one per statement."""
    if conn.dialect.name == "postgresql":
        await conn.execution_options(isolation_level="REPEATABLE READ")


async def _compare_chunk(
    conn: AsyncConnection, order_ids: Sequence[str], report: RebuildReport, max_reported: int
) -> None:
    histories = await load_histories(conn, order_ids)
    live = await load_views(conn, order_ids)
    for order_id in order_ids:
        rebuilt = fold_order(histories[order_id]).view
        differences = compare_views(order_id, live.get(order_id), rebuilt)
        report.orders += 1
        if not differences:
            continue
        report.differing_orders.append(order_id)
        report.difference_count += len(differences)
        room = max_reported - len(report.differences)
        report.differences.extend(differences[: max(room, 0)])


async def _repair_chunk(conn: AsyncConnection, order_ids: Sequence[str]) -> None:
    await lock_orders(conn, order_ids)
    histories = await load_histories(conn, order_ids)
    folds = {order_id: fold_order(history) for order_id, history in histories.items()}
    await upsert_views(conn, [fold.view for fold in folds.values() if fold.view is not None])
    await delete_views(conn, [order_id for order_id, fold in folds.items() if fold.view is None])


IdsQuery = Callable[[str | None], Select[Any]]
"""Order ids above a keyset bound (or all), ascending."""


def _history_ids(after: str | None) -> Select[Any]:
    query = select(order_history.c.order_id).distinct().order_by(order_history.c.order_id)
    return query if after is None else query.where(order_history.c.order_id > after)


def _orphan_ids(after: str | None) -> Select[Any]:
    """Live views whose order has no history at all."""
    recorded = exists().where(order_history.c.order_id == order_views.c.order_id)
    query = select(order_views.c.order_id).where(~recorded).order_by(order_views.c.order_id)
    return query if after is None else query.where(order_views.c.order_id > after)


async def _count(conn: AsyncConnection, ids: IdsQuery) -> int:
    counted = select(func.count()).select_from(ids(None).order_by(None).subquery())
    return int(await conn.scalar(counted) or 0)


async def _chunks(conn: AsyncConnection, ids: IdsQuery, size: int) -> AsyncIterator[list[str]]:
    """The ids of ``ids`` in ascending chunks of ``size``, by keyset (never an offset)."""
    after: str | None = None
    while True:
        chunk = list((await conn.execute(ids(after).limit(size))).scalars())
        if chunk:
            yield chunk
        if len(chunk) < size:
            return
        after = chunk[-1]


def _slices(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

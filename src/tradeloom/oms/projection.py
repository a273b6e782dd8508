"""The order projection: keeps the order read model (``order_views``, ``order_history``) from
the bus. The query side of the OMS reads those tables, never the stream.

It consumes ``order.commands`` (submitted, cancel and amend requests) and ``order.events``
(what execution reports) in one consumer group. Per account each topic arrives in order, but
the two topics do not wait for each other, and delivery is at least once. So, per batch and in
one transaction:

1. every order event is recorded in ``order_history`` once, by event id (a redelivery
   inserts nothing), and what each order that gained events had stored is read back in the
   same statement: its view, how many events it had, the latest of their times;
2. each such order's view becomes the fold of its whole history
   (:func:`tradeloom.domain.order_view.fold_order`: submission first, then by
   ``occurred_at`` and event id, through the domain state machine). Usually its new events
   come after all the earlier ones and the stored view is simply continued with them
   (:func:`~tradeloom.domain.order_view.resume_fold`, which gives the same view); an order
   with no earlier events is folded from the new ones; any other (an event out of order, a
   view the fold cannot continue, a view that does not count every recorded event) is
   refolded from its whole history, read back. The views are then upserted.

Guarantees: the view is a function of the set of events recorded for the order, so any
redelivery, in any order and any batching, changes nothing; an event that arrives before the
order's submission is kept and folded in once the submission arrives (until then the order
has no view); an event the state machine refuses is kept in the history, changes nothing,
and is logged as a warning once. On PostgreSQL the touched orders are locked for the
transaction (see :mod:`tradeloom.oms.order_view`), so the two topics' batches of one order
never fold past each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.events import Event, OrderSubmitted
from tradeloom.domain.order_view import OrderFold, fold_order, resume_fold
from tradeloom.domain.time import Clock
from tradeloom.messaging.port import (
    PERSISTENT_RETRY,
    VIEW_MAX_WAIT,
    ConsumerOptions,
    EventBus,
    Subscription,
)
from tradeloom.messaging.topics import ORDER_COMMANDS, ORDER_EVENTS
from tradeloom.observability.metrics import Metrics
from tradeloom.oms.order_view import (
    Recorded,
    StoredOrder,
    history_row,
    load_histories,
    lock_orders,
    order_id_of,
    record_history,
    upsert_views,
)
from tradeloom.storage.database import Database

log = structlog.get_logger("tradeloom.oms.projection")

TOPICS = (ORDER_COMMANDS.name, ORDER_EVENTS.name)


MAX_BATCH = 500
"""Events per batch at most. Each batch costs a transaction and a few statements whatever its
size, so a backlog drains cheaper in bigger ones (measured on this projection with
``bench/projection_cost.py``, 200 -> 500: CPU per fill 131 -> 115 us here and 90 -> 75 us
in PostgreSQL); a steady trickle still goes in small batches, as soon as they come."""


class OrderProjection:
    """Consumes the order topics in group ``group`` and keeps the order read model."""

    def __init__(
        self,
        bus: EventBus,
        database: Database,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        group: str = "oms-projection",
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._bus = bus
        self._database = database
        self._clock = clock
        self._metrics = metrics
        self._group = group
        self._max_batch = max_batch
        self._subscriptions: list[Subscription] = []
        self.applied = 0
        self.duplicates = 0

    async def start(self) -> None:
        options = ConsumerOptions(
            retry=PERSISTENT_RETRY, max_batch=self._max_batch, max_wait=VIEW_MAX_WAIT
        )
        for topic in TOPICS:
            subscription = await self._bus.subscribe_batch(topic, self._group, self.handle, options)
            self._subscriptions.append(subscription)

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.stop()

    async def handle(self, events: Sequence[Event]) -> None:
        """Project one batch (any order events, any order, duplicates allowed) in one
        transaction; raises, leaving nothing written, if the database fails."""
        rows = _history_rows(events)
        if not rows:
            return
        async with self._database.transaction() as conn:
            await lock_orders(conn, {row["order_id"] for row in rows.values()})
            recorded = await record_history(conn, list(rows.values()))
            folds = await _fold(conn, recorded, _new_by_order(events, rows, recorded.new_ids))
            await upsert_views(conn, [f.view for f in folds.values() if f.view is not None])
        self._warn_refused(folds, recorded.new_ids)
        self._count([e for e in events if e.id in rows], recorded.new_ids)

    def _warn_refused(self, folds: dict[str, OrderFold], new_ids: set[str]) -> None:
        """Log each refused event once: in the batch that recorded it, or in the one that
        brought its order's submission (before which nothing of the order is folded)."""
        for order_id, fold in folds.items():
            if fold.view is None:
                continue
            first_fold = any(
                isinstance(event.payload, OrderSubmitted) and event.id in new_ids
                for event in fold.events
            )
            types = {event.id: event.type for event in fold.events}
            for outcome in fold.refused:
                if first_fold or outcome.event_id in new_ids:
                    log.warning(
                        "oms.projection.event_refused",
                        order_id=order_id,
                        event_id=outcome.event_id,
                        type=types[outcome.event_id],
                        why=outcome.note,
                    )

    def _count(self, events: list[Event], new_ids: set[str]) -> None:
        fresh = {event.id: event for event in events if event.id in new_ids}
        duplicates = len(events) - len(fresh)
        self.applied += len(fresh)
        self.duplicates += duplicates
        if self._metrics is None:
            return
        now = self._clock.now()
        lag = self._metrics.projection_lag_seconds.labels(group=self._group)
        for event in fresh.values():
            lag.observe(max(0.0, (now - event.occurred_at).total_seconds()))
        projected = self._metrics.events_projected
        if fresh:
            projected.labels(group=self._group, outcome="applied").inc(len(fresh))
        if duplicates:
            projected.labels(group=self._group, outcome="duplicate").inc(duplicates)


def _new_by_order(
    events: Sequence[Event], rows: dict[str, dict[str, Any]], new_ids: set[str]
) -> dict[str, list[Event]]:
    """The batch's newly recorded events, once each, by order."""
    new: dict[str, list[Event]] = {}
    taken: set[str] = set()  # a second copy in the batch is not new again
    for event in events:
        if event.id in new_ids and event.id not in taken:
            taken.add(event.id)
            new.setdefault(rows[event.id]["order_id"], []).append(event)
    return new


async def _fold(
    conn: AsyncConnection, recorded: Recorded, new: dict[str, list[Event]]
) -> dict[str, OrderFold]:
    """Each order that gained events, folded: continued from what was stored where that is
    exact (:func:`_continued`), else from its whole history, read back in one statement."""
    folds: dict[str, OrderFold] = {}
    for order_id, stored in recorded.stored.items():
        fold = _continued(stored, new[order_id])
        if fold is not None:
            folds[order_id] = fold
    refold = [order_id for order_id in recorded.stored if order_id not in folds]
    if refold:
        histories = await load_histories(conn, refold)
        folds.update((order_id, fold_order(histories[order_id])) for order_id in refold)
    return folds


def _continued(stored: StoredOrder, new: list[Event]) -> OrderFold | None:
    """The fold of an order's whole history from what was stored and its new events, when
    the history need not be read: an order with no earlier events is the fold of the new
    ones; a view that counts every earlier event is continued when the domain says it can be
    (:func:`resume_fold`). None: refold the whole history."""
    if stored.event_count == 0:
        return fold_order(new)
    if stored.view is None or stored.view.event_count != stored.event_count:
        return None
    return resume_fold(stored.view, stored.latest, new)


def _history_rows(events: Sequence[Event]) -> dict[str, dict[str, Any]]:
    """History rows of the batch's order events, once per event id. An event of no order
    (none should come on these topics) is skipped; one without an account is logged."""
    rows: dict[str, dict[str, Any]] = {}
    for event in events:
        order_id = order_id_of(event)
        if order_id is None:
            continue
        if event.account_id is None:
            log.warning("oms.projection.event_without_account", event_id=event.id, type=event.type)
            continue
        rows[event.id] = history_row(event, order_id, event.account_id)
    return rows

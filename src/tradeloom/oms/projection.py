"""The order projection: keeps the order read model (``order_views``, ``order_history``) from
the bus. The query side of the OMS reads those tables, never the stream.

It consumes ``order.commands`` (submitted, cancel and amend requests) and ``order.events``
(what execution reports) in one consumer group. Per account each topic arrives in order, but
the two topics do not wait for each other, and delivery is at least once. So, per batch and in
one transaction:

1. every order event is recorded in ``order_history`` once, by event id (a redelivery
   inserts nothing);
2. each order that gained an event has its view folded again from its whole history
   (:func:`tradeloom.domain.order_view.fold_order`: submission first, then by
   ``occurred_at`` and event id, through the domain state machine) and upserted.

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

from tradeloom.domain.events import Event, OrderSubmitted
from tradeloom.domain.order_view import OrderFold, fold_order
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
        max_batch: int = 200,
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
            new_ids = await record_history(conn, list(rows.values()))
            touched = {rows[event_id]["order_id"] for event_id in new_ids}
            histories = await load_histories(conn, touched)
            folds = {order_id: fold_order(history) for order_id, history in histories.items()}
            await upsert_views(conn, [f.view for f in folds.values() if f.view is not None])
        self._warn_refused(folds, new_ids)
        self._count([e for e in events if e.id in rows], new_ids)

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

"""Keeps the OMS's order rows current from execution's order events.

The command side needs to know where each order stands (a filled order cannot be canceled).
This consumer applies ``order.events`` to the ``orders`` rows through the domain's state
machine, in order per account (the bus's key), one transaction per batch, in a fixed number
of statements whatever the batch size (see :mod:`tradeloom.oms.order_rows`):

1. the batch's event ids are recorded in ``processed_events``; only those not recorded before
   are applied, so a redelivery, in any order relative to other events and also repeated
   inside one batch, changes nothing;
2. every order those events touch is read and locked, with the fill ids applied to it;
3. the events are applied in memory, in delivery order (an order's acceptance then its fills
   in one batch go in that order). A fill is also applied once by its fill id. An event the
   order's state machine refuses (a fill after the order was canceled, say) or that concerns
   an unknown order is logged as a warning and skipped; the rest of the batch applies;
4. the changed orders and their new fills are written back.

Risk keeps its own exposures from the same events (its own consumer group), so this updater
and risk never wait on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import (
    AnyPayload,
    Event,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderReplaced,
    OrderReplaceRejected,
)
from tradeloom.domain.orders import Order
from tradeloom.domain.time import Clock
from tradeloom.messaging.port import PERSISTENT_RETRY, ConsumerOptions, EventBus, Subscription
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.oms.order_rows import (
    OrderFill,
    load_orders_for_update,
    record_processed,
    save_orders,
)
from tradeloom.storage.database import Database

log = structlog.get_logger("tradeloom.oms.state")


@dataclass(frozen=True, slots=True)
class _OrderEvent:
    event: Event
    order_id: str


@dataclass(slots=True)
class _Changes:
    """What applying a batch in memory changed: the orders, the fills new to them, and how
    many events took effect."""

    orders: dict[str, Order] = field(default_factory=dict)
    fills: list[OrderFill] = field(default_factory=list)
    applied: int = 0


class OrderStateUpdater:
    """Consumes ``order.events`` in group ``group`` and keeps the ``orders`` rows current."""

    def __init__(
        self,
        bus: EventBus,
        database: Database,
        clock: Clock,
        *,
        group: str = "oms-state",
    ) -> None:
        self._bus = bus
        self._database = database
        self._clock = clock
        self._group = group
        self._subscription: Subscription | None = None
        self.applied = 0
        self.ignored = 0

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe_batch(
            ORDER_EVENTS.name,
            self._group,
            self.handle,
            ConsumerOptions(retry=PERSISTENT_RETRY, max_batch=200),
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None

    async def handle(self, events: Sequence[Event]) -> None:
        """Apply one batch in one transaction; raises, leaving nothing written, if the
        database fails (the batch is then redelivered)."""
        delivered = _order_events(events)
        applied = 0
        if delivered:
            async with self._database.transaction() as conn:
                applied = await self._apply_batch(conn, delivered)
        self.applied += applied
        self.ignored += len(events) - applied

    async def _apply_batch(self, conn: AsyncConnection, delivered: list[_OrderEvent]) -> int:
        now = self._clock.now()
        new_ids = await record_processed(conn, self._group, [d.event.id for d in delivered], now)
        fresh = [d for d in delivered if d.event.id in new_ids]
        stored = await load_orders_for_update(conn, {d.order_id for d in fresh})
        changes = _apply_in_order(fresh, stored)
        await save_orders(conn, list(changes.orders.values()), changes.fills, now)
        return changes.applied


def _order_events(events: Sequence[Event]) -> list[_OrderEvent]:
    """The batch's events that concern an order, in delivery order, each event id once (its
    first delivery)."""
    seen: dict[str, _OrderEvent] = {}
    for event in events:
        order_id = getattr(event.payload, "order_id", None)
        if isinstance(order_id, str) and event.id not in seen:
            seen[event.id] = _OrderEvent(event, order_id)
    return list(seen.values())


def _apply_in_order(fresh: list[_OrderEvent], stored: dict[str, Order]) -> _Changes:
    """Apply ``fresh`` (in delivery order) to the ``stored`` orders, in memory."""
    changes = _Changes()
    for item in fresh:
        event = item.event
        order = stored.get(item.order_id)
        if order is None:
            log.warning("oms.event_for_unknown_order", order_id=item.order_id, type=event.type)
            continue
        try:
            took_effect = _transition(order, event.payload)
        except DomainError as exc:
            log.warning(
                "oms.event_not_applicable", order_id=item.order_id, type=event.type, why=str(exc)
            )
            continue
        if not took_effect:
            continue
        changes.applied += 1
        changes.orders[order.order_id] = order
        if isinstance(event.payload, (OrderPartiallyFilled, OrderFilled)):
            changes.fills.append((order.order_id, event.payload.fill_id))
    return changes


def _transition(order: Order, payload: AnyPayload) -> bool:
    """Move ``order`` by one event through the state machine; False when the event changes
    nothing (a fill applied before, an event of no effect on the order's state). Raises
    :class:`DomainError`, the order unchanged, when the state machine refuses it."""
    if isinstance(payload, (OrderPartiallyFilled, OrderFilled)):
        return order.apply_fill(payload.fill_id, payload.quantity, payload.price)
    if isinstance(payload, OrderAccepted):
        order.accept()
    elif isinstance(payload, OrderRejected):
        order.reject(f"{payload.code}: {payload.reason}")
    elif isinstance(payload, OrderCanceled):
        order.cancel(payload.reason)
    elif isinstance(payload, OrderExpired):
        order.expire()
    elif isinstance(payload, OrderReplaced):
        order.replace(payload.quantity, payload.limit_price, payload.stop_price)
    elif isinstance(payload, OrderCancelRejected):
        order.refuse_request(payload.reason)
    elif isinstance(payload, OrderReplaceRejected):
        order.refuse_replace(payload.reason)
    else:
        return False
    return True

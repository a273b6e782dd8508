"""Keeps the OMS's order rows current from execution's order events.

The command side needs to know where each order stands (a filled order cannot be canceled).
This consumer applies ``order.events`` to the ``orders`` rows through the domain's state
machine, in order per account (the bus's key), one transaction per batch:

* idempotent: each event is applied once, by its id (recorded in ``processed_events`` in the
  same transaction), so a redelivery in any order relative to other events changes nothing;
  a fill is also applied once by its fill id. An event the order's state machine refuses (a
  fill after the order was canceled, say) is logged as a warning and skipped.

Risk keeps its own exposures from the same events (its own consumer group), so this updater
and risk never wait on each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import (
    Event,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderReplaced,
)
from tradeloom.domain.orders import Order
from tradeloom.domain.time import Clock
from tradeloom.messaging.port import PERSISTENT_RETRY, ConsumerOptions, EventBus, Subscription
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.oms.repository import load_order, save_order
from tradeloom.storage.database import Database, insert_if_absent
from tradeloom.storage.schema import processed_events

log = structlog.get_logger("tradeloom.oms.state")


class OrderStateUpdater:
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
        applied = 0
        async with self._database.transaction() as conn:
            for event in events:
                if await self._apply(conn, event) is not None:
                    applied += 1
        self.applied += applied
        self.ignored += len(events) - applied

    async def _first_time(self, conn: AsyncConnection, event: Event) -> bool:
        row = {"consumer": self._group, "event_id": event.id, "processed_at": self._clock.now()}
        return await insert_if_absent(conn, processed_events, row)

    async def _apply(self, conn: AsyncConnection, event: Event) -> Order | None:
        payload = event.payload
        order_id = getattr(payload, "order_id", None)
        if not isinstance(order_id, str):
            return None
        if not await self._first_time(conn, event):
            return None
        order = await load_order(conn, order_id, for_update=True)
        if order is None:
            log.warning("oms.event_for_unknown_order", order_id=order_id, type=event.type)
            return None
        fill_id: str | None = None
        try:
            if isinstance(payload, (OrderPartiallyFilled, OrderFilled)):
                if not order.apply_fill(payload.fill_id, payload.quantity, payload.price):
                    return None
                fill_id = payload.fill_id
            elif isinstance(payload, OrderAccepted):
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
            else:
                return None
        except DomainError as exc:
            log.warning(
                "oms.event_not_applicable", order_id=order_id, type=event.type, why=str(exc)
            )
            return None
        await save_order(conn, order, self._clock.now(), new_fill_id=fill_id)
        return order

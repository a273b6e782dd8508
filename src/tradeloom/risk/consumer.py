"""Keeps exposure current from order events: a bus handler for the order events topic.

Fills (``order.partially_filled``, ``order.filled``) move positions and cash and shrink the
order's reservation; terminal events (``order.filled``, ``order.canceled``,
``order.rejected``, ``order.expired``) release what the order still holds. Every step is
idempotent (fill id, order id), so redelivery, and any order of delivery relative to events
already applied, changes nothing the second time (invariant 2). A cache failure raises, so the
bus retries the event and, after its retries, dead-letters it.
"""

from __future__ import annotations

from tradeloom.domain.events import (
    Event,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
)
from tradeloom.messaging.port import PERSISTENT_RETRY, ConsumerOptions, EventBus, Subscription
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.risk.exposure import Exposure


class ExposureUpdater:
    """``on_order_event`` is an ``EventHandler``; ``start`` subscribes it to the order events
    topic as the ``risk-exposure`` group, with persistent retries (a cache outage must not
    park a fill or a release)."""

    def __init__(self, exposure: Exposure) -> None:
        self._exposure = exposure
        self._subscription: Subscription | None = None

    async def start(self, bus: EventBus, group: str = "risk-exposure") -> None:
        self._subscription = await bus.subscribe(
            ORDER_EVENTS.name, group, self.on_order_event, ConsumerOptions(retry=PERSISTENT_RETRY)
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None

    async def on_order_event(self, event: Event) -> None:
        payload = event.payload
        if isinstance(payload, OrderPartiallyFilled | OrderFilled):
            if event.account_id is None:
                raise ValueError(f"fill event {event.id} carries no account id")
            await self._exposure.apply_fill(
                event.account_id,
                payload.symbol,
                payload.side,
                payload.quantity,
                payload.price,
                payload.order_id,
                payload.fill_id,
                payload.fee,
            )
        if isinstance(payload, OrderFilled | OrderCanceled | OrderRejected | OrderExpired):
            await self._exposure.release(payload.order_id)

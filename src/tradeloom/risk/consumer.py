"""Keeps exposure current from order events: a batch consumer of the order events topic.

Fills (``order.partially_filled``, ``order.filled``) move positions and cash and shrink the
order's reservation; terminal events (``order.filled``, ``order.canceled``,
``order.rejected``, ``order.expired``) release what the order still holds. A batch becomes
one list of changes in event order, applied by :meth:`Exposure.apply` in one cache round trip
(two when it holds a cancel, reject or expiry: those events do not name the order's symbol,
so the reservations are read first, all in one read). The bus hands a batch over in per-key
order and the changes run in that order, so each account's events apply in order.

Every step is idempotent (fill id, order id), so redelivery, and any order of delivery
relative to events already applied, changes nothing the second time (invariant 2). A cache
failure raises, so the bus retries the batch's events one by one and, after their retries,
dead-letters them.
"""

from __future__ import annotations

from collections.abc import Sequence

from tradeloom.domain.events import (
    Event,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
)
from tradeloom.messaging.port import (
    PERSISTENT_RETRY,
    VIEW_MAX_WAIT,
    ConsumerOptions,
    EventBus,
    Subscription,
)
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.risk.exposure import ApplyFill, Exposure, ExposureChange, ReleaseOrder


class ExposureUpdater:
    """``handle`` is a ``BatchHandler``; ``start`` subscribes it to the order events topic as
    the ``risk-exposure`` group, with persistent retries (a cache outage must not park a fill
    or a release) and short batches (buying power freed by a fill should reach the next risk
    check soon: a batch takes what is already there and goes)."""

    def __init__(self, exposure: Exposure, *, max_batch: int = 200) -> None:
        self._exposure = exposure
        self._max_batch = max_batch
        self._subscription: Subscription | None = None

    async def start(self, bus: EventBus, group: str = "risk-exposure") -> None:
        options = ConsumerOptions(
            retry=PERSISTENT_RETRY, max_batch=self._max_batch, max_wait=VIEW_MAX_WAIT
        )
        self._subscription = await bus.subscribe_batch(
            ORDER_EVENTS.name, group, self.handle, options
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None

    async def handle(self, events: Sequence[Event]) -> None:
        """Apply the batch's fills and releases in event order; other events are skipped.
        A fill without an account id raises before anything is applied."""
        changes = [change for event in events for change in _changes_of(event)]
        if changes:
            await self._exposure.apply(changes)


def _changes_of(event: Event) -> list[ExposureChange]:
    """What one order event changes in exposure, in the order to apply it."""
    payload = event.payload
    if isinstance(payload, OrderPartiallyFilled | OrderFilled):
        if event.account_id is None:
            raise ValueError(f"fill event {event.id} carries no account id")
        fill = ApplyFill(
            event.account_id,
            payload.symbol,
            payload.side,
            payload.quantity,
            payload.price,
            payload.order_id,
            payload.fill_id,
            payload.fee,
        )
        if isinstance(payload, OrderFilled):
            return [fill, ReleaseOrder(payload.order_id, event.account_id, payload.symbol)]
        return [fill]
    if isinstance(payload, OrderCanceled | OrderRejected | OrderExpired):
        return [ReleaseOrder(payload.order_id)]
    return []

"""The execution engine: ``order.commands`` in, broker calls out.

It consumes the OMS's commands as the ``execution`` group (in order per account) and drives
the broker gateway; what the broker answers reaches :class:`ReportRecorder` through the
gateway and becomes order events there, never here.

* **Never twice to the broker.** Before an order is sent, a row for it is committed in
  ``broker_orders``; a redelivered ``order.submitted`` finds the row and sends nothing. The
  price of that guarantee is at-most-once on a crash between the commit and the send: such an
  order is sent zero times and stays ``pending_new`` until reconciled with the broker's open
  orders (not done yet; see the README).
* **A timeout forgets nothing.** When the gateway times out the command is still acknowledged:
  the order is with the broker, and its late acknowledgement and fills still arrive.
* **Broker down → dead letter.** When the gateway's circuit is open the order goes to
  ``dead_letter`` with reason ``BROKER_UNAVAILABLE`` and an ``order.rejected`` tells its
  owner, both in one transaction through the outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from sqlalchemy import delete

from tradeloom.broker.adapter import BrokerTimeout, BrokerUnavailable
from tradeloom.broker.gateway import BrokerGateway
from tradeloom.broker.reports import AmendRequest, CancelRequest, SubmitOrder
from tradeloom.domain.events import (
    DeadLettered,
    Event,
    OrderAmendRequested,
    OrderCancelRejected,
    OrderCancelRequested,
    OrderRejected,
    OrderSubmitted,
    encode_event,
    new_event,
)
from tradeloom.domain.time import Clock
from tradeloom.messaging.port import PERSISTENT_RETRY, ConsumerOptions, EventBus, Subscription
from tradeloom.messaging.topics import DEAD_LETTER, ORDER_COMMANDS, ORDER_EVENTS
from tradeloom.storage.database import Database, insert_if_absent
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import broker_orders

log = structlog.get_logger("tradeloom.execution")

BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"


class ExecutionEngine:
    def __init__(
        self,
        bus: EventBus,
        database: Database,
        outbox: Outbox,
        gateway: BrokerGateway,
        clock: Clock,
        *,
        notify: Callable[[], None] = lambda: None,
        group: str = "execution",
    ) -> None:
        self._bus = bus
        self._database = database
        self._outbox = outbox
        self._gateway = gateway
        self._clock = clock
        self._notify = notify
        self._group = group
        self._subscription: Subscription | None = None
        self.sent = 0
        self.skipped = 0

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(
            ORDER_COMMANDS.name,
            self._group,
            self.handle,
            ConsumerOptions(retry=PERSISTENT_RETRY, ack_wait=60.0),
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None

    async def handle(self, event: Event) -> None:
        payload = event.payload
        if isinstance(payload, OrderSubmitted):
            await self._submit(event, payload)
        elif isinstance(payload, OrderCancelRequested):
            await self._cancel(event, payload)
        elif isinstance(payload, OrderAmendRequested):
            await self._amend(event, payload)
        else:
            log.warning("execution.unexpected_command", type=event.type, id=event.id)

    async def _submit(self, event: Event, order: OrderSubmitted) -> None:
        account = event.account_id or ""
        if not await self._claim(event, order, account):
            self.skipped += 1
            log.info("execution.already_sent", order_id=order.order_id)
            return
        request = SubmitOrder(
            order_id=order.order_id,
            account_id=account,
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            quantity=order.quantity,
            time_in_force=order.time_in_force,
            limit_price=order.limit_price,
            stop_price=order.stop_price,
        )
        try:
            await self._gateway.submit(request)
            self.sent += 1
        except BrokerTimeout:
            self.sent += 1
            log.warning("execution.broker_timeout", order_id=order.order_id)
        except BrokerUnavailable as exc:
            await self._dead_letter(event, order.order_id, str(exc))

    async def _claim(self, event: Event, order: OrderSubmitted, account: str) -> bool:
        """Commit the row that says this order went to the broker; False if it already did."""
        row = {
            "order_id": order.order_id,
            "account_id": account,
            "symbol": order.symbol,
            "side": order.side.value,
            "correlation_id": event.correlation_id,
            "causation_id": event.id,
            "sent_at": self._clock.now(),
        }
        async with self._database.transaction() as conn:
            return await insert_if_absent(conn, broker_orders, row)

    async def _cancel(self, event: Event, request: OrderCancelRequested) -> None:
        cancel = CancelRequest(order_id=request.order_id, account_id=event.account_id or "")
        try:
            await self._gateway.cancel(cancel)
        except BrokerTimeout:
            log.warning("execution.broker_timeout", order_id=request.order_id, request="cancel")
        except BrokerUnavailable as exc:
            await self._refuse(event, request.order_id, f"broker unavailable: {exc}")

    async def _amend(self, event: Event, request: OrderAmendRequested) -> None:
        amend = AmendRequest(
            order_id=request.order_id,
            account_id=event.account_id or "",
            quantity=request.quantity,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
        )
        try:
            await self._gateway.amend(amend)
        except BrokerTimeout:
            log.warning("execution.broker_timeout", order_id=request.order_id, request="amend")
        except BrokerUnavailable as exc:
            await self._refuse(event, request.order_id, f"broker unavailable: {exc}")

    async def _dead_letter(self, event: Event, order_id: str, error: str) -> None:
        """Park the order in dead_letter and tell its owner it was rejected, and forget the
        claim (the broker was never reached), in one commit. The commit is retried until it
        succeeds: giving up here would leave an order that was neither sent nor rejected."""
        delay = 0.05
        while True:
            try:
                await self._park(event, order_id, error)
                return
            except Exception:
                log.exception("execution.dead_letter_write_failed", order_id=order_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _park(self, event: Event, order_id: str, error: str) -> None:
        account = event.account_id or ""
        parked = DeadLettered(
            topic=ORDER_COMMANDS.name,
            group=self._group,
            reason=BROKER_UNAVAILABLE,
            error=error,
            attempts=1,
            original_event_id=event.id,
            original_type=event.type,
            original=encode_event(event),
        )
        rejected = OrderRejected(
            order_id=order_id, code=BROKER_UNAVAILABLE, reason="the broker is unavailable"
        )
        async with self._database.transaction() as conn:
            await conn.execute(delete(broker_orders).where(broker_orders.c.order_id == order_id))
            await self._outbox.add_many(
                conn,
                [
                    (DEAD_LETTER.name, account, self._follow_up(event, parked)),
                    (ORDER_EVENTS.name, account, self._follow_up(event, rejected)),
                ],
            )
        self._notify()
        log.error("execution.dead_lettered", order_id=order_id, reason=BROKER_UNAVAILABLE)

    async def _refuse(self, event: Event, order_id: str, reason: str) -> None:
        refused = OrderCancelRejected(order_id=order_id, reason=reason)
        async with self._database.transaction() as conn:
            await self._outbox.add(
                conn, ORDER_EVENTS.name, event.account_id or "", self._follow_up(event, refused)
            )
        self._notify()

    def _follow_up(
        self, cause: Event, payload: DeadLettered | OrderRejected | OrderCancelRejected
    ) -> Event:
        return new_event(
            payload,
            occurred_at=self._clock.now(),
            correlation_id=cause.correlation_id,
            causation_id=cause.id,
            account_id=cause.account_id,
        )

"""The execution engine: ``order.commands`` in, broker calls out.

It consumes the OMS's commands as the ``execution`` group in batches (in order per account)
and drives the broker gateway; what the broker answers reaches :class:`ReportRecorder`
through the gateway and becomes order events there, never here.

* **Never twice to the broker.** Before an order is sent, a row for it is committed in
  ``broker_orders``: every ``order.submitted`` of a batch is claimed in one transaction with
  one statement, and only the orders claimed by it are sent. A redelivered ``order.submitted``
  finds the row and sends nothing. The price of that guarantee is at-most-once on a crash
  between the commit and the send: such an order is sent zero times and stays ``pending_new``
  until reconciled with the broker's open orders (not done yet; see the README).
* **In order.** A batch's commands reach the broker in batch order (so a cancel after a
  submit of the same order follows it), all sent before any answer is awaited; then the
  answers are awaited together. While the gateway's breaker is not closed, commands are sent
  one at a time instead, so a half-open breaker's single trial decides for the rest.
* **A timeout forgets nothing.** When the gateway times out the command is still acknowledged:
  the order is with the broker, and its late acknowledgement and fills still arrive.
* **Broker down → dead letter.** When the gateway's circuit is open the order goes to
  ``dead_letter`` with reason ``BROKER_UNAVAILABLE`` and an ``order.rejected`` tells its
  owner, both in one transaction through the outbox (one for the whole batch); a cancel the
  broker could not take is answered with ``order.cancel_rejected``, an amend with
  ``order.replace_rejected``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from tradeloom.broker.adapter import BrokerTimeout, BrokerUnavailable
from tradeloom.broker.gateway import BrokerGateway
from tradeloom.broker.reports import (
    AmendRequest,
    BrokerReport,
    BrokerRequest,
    CancelRequest,
    SubmitOrder,
)
from tradeloom.domain.events import (
    DeadLettered,
    Event,
    OrderAmendRequested,
    OrderCancelRejected,
    OrderCancelRequested,
    OrderRejected,
    OrderReplaceRejected,
    OrderSubmitted,
    encode_event,
    new_event,
)
from tradeloom.domain.time import Clock
from tradeloom.execution.store import claim_orders, claim_row, forget_orders
from tradeloom.messaging.port import (
    PERSISTENT_RETRY,
    VIEW_MAX_WAIT,
    ConsumerOptions,
    EventBus,
    Subscription,
)
from tradeloom.messaging.topics import DEAD_LETTER, ORDER_COMMANDS, ORDER_EVENTS
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox

log = structlog.get_logger("tradeloom.execution")

BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
COMMAND_BATCH = 200
"""Commands per batch: enough to amortise the claim's commit over many orders."""

_Outcome = BaseException | None
"""What sending one command came to: None (answered), or what the gateway raised."""


@dataclass(frozen=True, slots=True)
class _Command:
    """A command of the batch and the broker request it becomes."""

    event: Event
    request: BrokerRequest


_Unsent = tuple[_Command, BrokerUnavailable]
"""A command the broker could not take, and why."""


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
        self.send_errors = 0  # the gateway failed in an unexpected way (a bug): see the log

    async def start(self) -> None:
        # A short linger: a command waits at most VIEW_MAX_WAIT for others to share its
        # batch, and a backlog still comes in full batches.
        self._subscription = await self._bus.subscribe_batch(
            ORDER_COMMANDS.name,
            self._group,
            self.handle_batch,
            ConsumerOptions(
                retry=PERSISTENT_RETRY,
                ack_wait=60.0,
                max_batch=COMMAND_BATCH,
                max_wait=VIEW_MAX_WAIT,
            ),
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None

    async def handle(self, event: Event) -> None:
        """Handle one command (a batch of one)."""
        await self.handle_batch([event])

    async def handle_batch(self, events: Sequence[Event]) -> None:
        """Claim the batch's orders, send its commands in order, await the answers, and park
        what the broker could not take. Raises (so the bus redelivers the commands) only if the
        claim failed, before anything was sent: once commands went out, a redelivery would send
        cancels and amends again and re-claim orders that were parked, so an unexpected gateway
        failure is logged and counted (``send_errors``), its command left like a timed-out one
        (sent, outcome unknown, to be reconciled)."""
        claimed = await self._claim(events)
        commands = [
            _Command(event, request)
            for event in events
            if (request := self._request(event, claimed)) is not None
        ]
        outcomes = await self._send(commands)
        unsent: list[_Unsent] = []
        for command, outcome in zip(commands, outcomes, strict=True):
            if isinstance(outcome, BrokerUnavailable):
                unsent.append((command, outcome))
            elif outcome is None or isinstance(outcome, BrokerTimeout):
                self._sent(command.request, outcome)
            else:
                self.send_errors += 1
                log.error(
                    "execution.send_failed",
                    order_id=command.request.order_id,
                    request=type(command.request).__name__,
                    error=repr(outcome),
                )
        if unsent:
            await self._park(unsent)

    async def _claim(self, events: Sequence[Event]) -> set[str]:
        """Commit the rows that say these orders went to the broker, in one transaction;
        return the orders claimed now (not those some earlier delivery claimed)."""
        rows: dict[str, dict[str, str]] = {}
        for event in events:
            order = event.payload
            if isinstance(order, OrderSubmitted) and order.order_id not in rows:
                rows[order.order_id] = claim_row(
                    order.order_id,
                    event.account_id or "",
                    order.symbol,
                    order.side,
                    event.correlation_id,
                    event.id,
                )
        if not rows:
            return set()
        async with self._database.transaction() as conn:
            return await claim_orders(conn, list(rows.values()), self._clock.now())

    def _request(self, event: Event, claimed: set[str]) -> BrokerRequest | None:
        """The broker request of ``event``, or None when there is nothing to send. A claim
        lets one submit through: a second submit of the order in the batch is skipped."""
        payload, account = event.payload, event.account_id or ""
        if isinstance(payload, OrderSubmitted):
            if payload.order_id not in claimed:
                self.skipped += 1
                log.info("execution.already_sent", order_id=payload.order_id)
                return None
            claimed.discard(payload.order_id)
            return SubmitOrder(
                order_id=payload.order_id,
                account_id=account,
                symbol=payload.symbol,
                side=payload.side,
                order_type=payload.order_type,
                quantity=payload.quantity,
                time_in_force=payload.time_in_force,
                limit_price=payload.limit_price,
                stop_price=payload.stop_price,
            )
        if isinstance(payload, OrderCancelRequested):
            return CancelRequest(order_id=payload.order_id, account_id=account)
        if isinstance(payload, OrderAmendRequested):
            return AmendRequest(
                order_id=payload.order_id,
                account_id=account,
                quantity=payload.quantity,
                limit_price=payload.limit_price,
                stop_price=payload.stop_price,
            )
        log.warning("execution.unexpected_command", type=event.type, id=event.id)
        return None

    async def _send(self, commands: Sequence[_Command]) -> list[_Outcome]:
        """Send every command in order and await the answers; one outcome per command.

        The gateway hands a request to the broker before its call first suspends, and tasks
        start in the order they were created, so creating the calls in order sends them in
        order. While the breaker is not closed, one command goes at a time until it closes.
        """
        outcomes: list[_Outcome] = []
        for index, command in enumerate(commands):
            if self._gateway.circuit_closed:
                rest = [asyncio.ensure_future(self._call(c.request)) for c in commands[index:]]
                answers = await asyncio.gather(*rest, return_exceptions=True)
                outcomes.extend(a if isinstance(a, BaseException) else None for a in answers)
                break
            try:
                await self._call(command.request)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _call(self, request: BrokerRequest) -> BrokerReport:
        if isinstance(request, SubmitOrder):
            return await self._gateway.submit(request)
        if isinstance(request, CancelRequest):
            return await self._gateway.cancel(request)
        return await self._gateway.amend(request)

    def _sent(self, request: BrokerRequest, timeout: BrokerTimeout | None) -> None:
        """Count a request the broker has; a timeout counts too (its answer comes later)."""
        if isinstance(request, SubmitOrder):
            self.sent += 1
        if timeout is not None:
            kind = type(request).__name__
            log.warning("execution.broker_timeout", order_id=request.order_id, request=kind)

    async def _park(self, unsent: Sequence[_Unsent]) -> None:
        """For each order the broker could not take: ``dead_letter`` and ``order.rejected``,
        and forget its claim (the broker was never reached); for each cancel,
        ``order.cancel_rejected``, and for each amend, ``order.replace_rejected``. All in one
        commit, in batch order, retried until it succeeds: giving up would leave an order that
        was neither sent nor rejected."""
        items: list[tuple[str, str, Event]] = []
        forgotten: list[str] = []
        for command, error in unsent:
            items.extend(self._refusals(command, str(error)))
            if isinstance(command.request, SubmitOrder):
                forgotten.append(command.request.order_id)
        delay = 0.05
        while True:
            try:
                async with self._database.transaction() as conn:
                    await forget_orders(conn, forgotten)
                    await self._outbox.add_many(conn, items)
                break
            except Exception:
                log.exception("execution.dead_letter_write_failed", orders=forgotten)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._notify()
        for order_id in forgotten:
            log.error("execution.dead_lettered", order_id=order_id, reason=BROKER_UNAVAILABLE)

    def _refusals(self, command: _Command, error: str) -> list[tuple[str, str, Event]]:
        """The outbox items that say ``command`` never reached the broker."""
        event, order_id = command.event, command.request.order_id
        account = event.account_id or ""
        if not isinstance(command.request, SubmitOrder):
            why = f"broker unavailable: {error}"
            refused: OrderCancelRejected | OrderReplaceRejected = (
                OrderCancelRejected(order_id=order_id, reason=why)
                if isinstance(command.request, CancelRequest)
                else OrderReplaceRejected(order_id=order_id, reason=why)
            )
            return [(ORDER_EVENTS.name, account, self._follow_up(event, refused))]
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
        return [
            (DEAD_LETTER.name, account, self._follow_up(event, parked)),
            (ORDER_EVENTS.name, account, self._follow_up(event, rejected)),
        ]

    def _follow_up(
        self,
        cause: Event,
        payload: DeadLettered | OrderRejected | OrderCancelRejected | OrderReplaceRejected,
    ) -> Event:
        return new_event(
            payload,
            occurred_at=self._clock.now(),
            correlation_id=cause.correlation_id,
            causation_id=cause.id,
            account_id=cause.account_id,
        )

"""The execution engine: ``order.commands`` in, broker calls out.

It consumes the OMS's commands as the ``execution`` group in batches (in order per account)
and drives the broker gateway; what the broker answers reaches :class:`ReportRecorder`
through the gateway and becomes order events there, never here.

* **Never twice to the broker.** Before an order is sent, a row for it is committed in
  ``broker_orders``: every ``order.submitted`` of a batch is claimed in one transaction with
  one statement, and only the orders claimed by it are sent. A redelivered ``order.submitted``
  finds the row and sends nothing. The price of that guarantee is at-most-once on a crash
  between the commit and the send: such an order is sent zero times, and the reconciliation
  at the next start rejects it (below).
* **One active process.** On PostgreSQL the engine consumes commands only while it holds
  the execution lock (:mod:`tradeloom.execution.lock`). ``start`` tries it; if another
  process holds it, this one logs a warning and stands by in the background, consuming
  nothing, until it gets the lock: then it reconciles and only then subscribes. If the lock
  looks lost (its connection failed or its session no longer holds it), the engine refuses
  the batches it already fetched (the bus redelivers them), stops consuming, only then lets
  the lock go, logs an error and stands by again; whoever takes the lock next reconciles.
  The window: up to a lock check (2 s) and its timeout (5 s) plus a batch in flight.
  ``active`` says whether this process runs execution now. SQLite (one process) needs no lock.
* **Reconciled when it becomes active.** Before it consumes any command, the engine compares
  the orders execution believes live (its open ``broker_orders`` rows) with the broker's open
  orders, so no command of this run races it: an order claimed but never acknowledged that
  the broker does not have is rejected (``NOT_SENT``), an acknowledged one the venue no
  longer knows (the paper venue restarts empty) is canceled, and either releases its
  reservation (see :mod:`tradeloom.execution.reconcile`). When the broker cannot be asked,
  commands are consumed all the same and the reconciliation is retried in the background
  with backoff, over the rows of the previous run only; while it is pending, a batch and a
  retry never overlap (one lock), so a retry never judges an order mid-send.
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
import contextlib
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
from tradeloom.execution.lock import ExecutionLock
from tradeloom.execution.reconcile import Reconciler
from tradeloom.execution.store import claim_orders, claim_row, forget_orders
from tradeloom.messaging.port import (
    PERSISTENT_RETRY,
    VIEW_MAX_WAIT,
    ConsumerOptions,
    EventBus,
    Subscription,
)
from tradeloom.messaging.topics import DEAD_LETTER, ORDER_COMMANDS, ORDER_EVENTS
from tradeloom.observability.metrics import Metrics
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox

log = structlog.get_logger("tradeloom.execution")

BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"


class ExecutionStepsDown(RuntimeError):
    """A batch reached an engine that is stepping down: nothing was claimed or sent, and the
    bus redelivers it (to the process holding the execution lock next)."""


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
        metrics: Metrics | None = None,
        lock: ExecutionLock | None = None,
        reconcile_at_start: bool = True,
        reconcile_retry_delay: float = 1.0,
        reconcile_retry_max_delay: float = 60.0,
    ) -> None:
        self._bus = bus
        self._database = database
        self._outbox = outbox
        self._gateway = gateway
        self._clock = clock
        self._notify = notify
        self._group = group
        self._metrics = metrics
        self._subscription: Subscription | None = None
        self.reconciler = Reconciler(
            database, outbox, gateway, clock, notify=notify, metrics=metrics
        )
        self._lock = lock or ExecutionLock(database)
        self._reconcile_at_start = reconcile_at_start
        self._retry_delay = reconcile_retry_delay
        self._retry_max_delay = reconcile_retry_max_delay
        self._active = False
        # Set while the engine steps down (lock lost, stopping): a batch already fetched must
        # not claim or send (it raises, so the bus hands it to whoever holds the lock next).
        self._refusing = False
        self._leading: asyncio.Task[None] | None = None
        # While a reconciliation is pending: the orders this run claimed (never the previous
        # run's to judge), and the lock that keeps batches and retries apart.
        self._claimed_meanwhile: set[str] | None = None
        self._unreconciled = asyncio.Lock()
        self._retry: asyncio.Task[None] | None = None
        self.sent = 0
        self.skipped = 0
        self.send_errors = 0  # the gateway failed in an unexpected way (a bug): see the log

    @property
    def active(self) -> bool:
        """True while this process runs execution (holds the lock, consumes commands); False
        while it stands by, or before ``start``."""
        return self._active

    @property
    def reconciled(self) -> bool:
        """False while a reconciliation with the broker is pending (retried in the
        background); True once one succeeded, or when none was asked for (a standby has
        none pending: it reconciles when it takes over)."""
        return self._claimed_meanwhile is None

    async def start(self) -> None:
        """Take the execution lock, reconcile, then consume commands; or, when another process
        holds the lock, stand by in the background (see the module docstring)."""
        if self._leading is not None or self._active:
            raise RuntimeError("the execution engine is already started")
        if not await self._lock.try_take():
            log.warning("execution standby: another process runs execution")
            self._leading = asyncio.create_task(self._lead(), name="execution-standby")
            return
        try:
            await self._activate()
        except BaseException:
            await self._deactivate()
            await self._lock.release()
            raise
        if self._lock.needed:
            self._leading = asyncio.create_task(self._lead(), name="execution-lock")

    async def stop(self) -> None:
        """Stop consuming (in-flight batches finish, fetched ones are refused), stop retrying,
        release the lock: the lock is released whatever failed before."""
        self._refusing = True
        leading, self._leading = self._leading, None
        if leading is not None:
            leading.cancel()
            try:
                await leading
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("execution.leading_failed")
        try:
            await self._deactivate()
        finally:
            await self._lock.release()

    async def _lead(self) -> None:
        """In the background: while active, watch the lock and step down when it is lost
        (then wait ``retry_every`` before trying it again); while standing by, wait for it
        and take over (reconcile first)."""
        while True:
            try:
                if not self._active:
                    await self._lock.take()
                    log.info("execution.lock_taken")
                    await self._activate()
                await self._lock.lost()
                log.error("execution stopped consuming: the execution lock was lost; standing by")
            except Exception:
                log.exception("execution.leading_failed")
            # Refuse fetched batches first, then stop consuming, then let the lock go (so a
            # lock that only looked lost is released after, never before, the last claim).
            self._refusing = True
            try:
                await self._deactivate()
            finally:
                await self._lock.release()
            # Give a standby that noticed first the lock; it reconciles before it consumes.
            await asyncio.sleep(self._lock.retry_every)

    async def _activate(self) -> None:
        """Reconcile (or start retrying it), then subscribe; from a clean state, so a stopped
        and restarted engine (or one taking over again) starts over."""
        self._claimed_meanwhile = None
        self._unreconciled = asyncio.Lock()
        self._refusing = False
        if self._reconcile_at_start and await self.reconciler.reconcile() is None:
            self._claimed_meanwhile = set()
            self._retry = asyncio.create_task(self._reconcile_until_done())
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
        self._set_active(True)

    async def _deactivate(self) -> None:
        """Stop retrying the reconciliation, then stop consuming (in-flight batches finish).
        A subscription that fails to stop is logged: batches it still fetches are refused."""
        self._set_active(False)
        retry, self._retry = self._retry, None
        if retry is not None:
            retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retry
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.stop()
            except Exception:
                log.exception("execution.unsubscribe_failed")

    def _set_active(self, active: bool) -> None:
        self._active = active
        if self._metrics is not None:
            self._metrics.execution_active.set(1 if active else 0)

    async def _reconcile_until_done(self) -> None:
        """Retry the reconciliation with capped backoff until one pass succeeds; each pass
        holds the lock batches take while it is pending, and skips this run's claims."""
        delay = self._retry_delay
        while True:
            await asyncio.sleep(delay)
            async with self._unreconciled:
                skip = self._claimed_meanwhile or set()
                if await self.reconciler.reconcile(skip=skip) is not None:
                    self._claimed_meanwhile = None
                    return
            delay = min(delay * 2, self._retry_max_delay)

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
        if self._claimed_meanwhile is None:
            await self._handle_batch(events)
            return
        async with self._unreconciled:
            await self._handle_batch(events)

    async def _handle_batch(self, events: Sequence[Event]) -> None:
        if self._refusing:
            raise ExecutionStepsDown("this process no longer runs execution; redeliver")
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
        # One statement on PostgreSQL, so in autocommit: one round trip, not three.
        async with self._database.single_statement() as conn:
            claimed = await claim_orders(conn, list(rows.values()), self._clock.now())
        if self._claimed_meanwhile is not None:
            self._claimed_meanwhile.update(claimed)
        return claimed

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

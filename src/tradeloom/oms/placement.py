"""Group commit of new orders: many placements, one transaction.

A durable commit costs the same for one order as for five hundred, so :class:`PlacementWriter`
writes every order handed to it while the previous transaction was in flight in the NEXT
single transaction: the orders are inserted (a taken client order id is skipped) and the
``order.submitted`` events of those inserted recorded in the outbox, then one notify of the
relay. On PostgreSQL that transaction is ONE statement in autocommit
(:func:`~tradeloom.oms.repository.place_orders`): one round trip, where BEGIN, the orders,
the outbox key locks, the events and COMMIT took five, each of which the next batch waited
behind. Nothing waits on purpose (no linger): a lone order is written at once,
and batches grow only as far as the database is slower than the callers (up to
``max_batch``).

Guarantees to each caller of :meth:`PlacementWriter.write`:

* it returns only once its order and event committed together (the outbox: no dual write);
* it raises :class:`DuplicateClientOrderId` when the account already has an order with that
  client order id, and then nothing of this order was written;
* it raises the error of its own row, never another's: a batch whose transaction fails is
  rolled back whole and written again in halves, down to single orders, so only the culprit
  fails. A lost or unreachable database is not a row's fault: every order of that batch gets
  the error at once (a lost commit's outcome is unknown; the caller's retry by client order
  id is idempotent);
* cancelling a caller never half-writes and never leaves the outcome open: an order still
  queued is withdrawn (never written); one already in the transaction in flight is waited
  for, so when the cancellation reaches the caller its order has either committed or never
  will (the caller may then check the database and release what it reserved).

Order: batches commit one after another, each in arrival order, so the events of one account
get outbox sequence numbers in the order their orders were handed over.

The writer needs no start or stop: a task is started by the first order after an idle spell
and ends when nothing is queued. Use it from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import DBAPIError

from tradeloom.domain.events import Event
from tradeloom.domain.orders import Order
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.oms.repository import DuplicateClientOrderId, place_orders
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox

log = structlog.get_logger("tradeloom.oms.placement")

MAX_BATCH = 500


@dataclass(eq=False, slots=True)
class _Placement:
    order: Order
    event: Event
    outcome: asyncio.Future[None]
    taken: bool = False  # in a batch: its outcome is the batch's
    withdrawn: bool = False  # its caller was cancelled while it was queued


class PlacementWriter:
    """Commits ``(order, order.submitted event)`` pairs in group transactions."""

    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        *,
        notify: Callable[[], None] = lambda: None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._database = database
        self._outbox = outbox
        self._notify = notify
        self._max_batch = max_batch
        self._queue: deque[_Placement] = deque()
        self._task: asyncio.Task[None] | None = None

    async def write(self, order: Order, event: Event) -> None:
        """Commit ``order`` and its ``event`` (for the order commands topic, keyed by the
        order's account) with the next batch; see the module docstring for what a return, an
        error and a cancellation each guarantee."""
        placement = _Placement(order, event, asyncio.get_running_loop().create_future())
        self._queue.append(placement)
        if self._task is None:
            # In a context of its own: the batch is no one caller's (logs, traces).
            self._task = asyncio.create_task(
                self._run(), name="oms-placement-writer", context=contextvars.Context()
            )
        try:
            # Shielded: a cancelled caller must not cancel the outcome the writer will set.
            await asyncio.shield(placement.outcome)
        except asyncio.CancelledError:
            if not placement.taken:
                placement.withdrawn = True
                placement.outcome.cancel()
            else:
                await _settled(placement.outcome)
            raise

    async def _run(self) -> None:
        batch: list[_Placement] = []
        try:
            while self._queue:
                batch = self._take()
                if batch:
                    await self._commit(batch)
        except BaseException as exc:
            # The task itself was cancelled (the loop is shutting down): an order in flight
            # committed or not, as the database decided; none queued or in flight may wait
            # forever.
            stopped = RuntimeError("the placement writer stopped")
            stopped.__cause__ = exc
            for placement in (*batch, *self._queue):
                _settle(placement, stopped)
            self._queue.clear()
            raise
        finally:
            self._task = None

    def _take(self) -> list[_Placement]:
        """Up to ``max_batch`` queued placements, oldest first, skipping withdrawn ones."""
        batch: list[_Placement] = []
        while self._queue and len(batch) < self._max_batch:
            placement = self._queue.popleft()
            if not placement.withdrawn:
                placement.taken = True
                batch.append(placement)
        return batch

    async def _commit(self, batch: Sequence[_Placement]) -> None:
        try:
            inserted = await self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1 or _not_a_rows_fault(exc):
                for placement in batch:
                    _settle(placement, exc)
                return
            log.warning("oms.placement_batch_failed", size=len(batch), error=repr(exc))
            half = len(batch) // 2
            await self._commit(batch[:half])
            await self._commit(batch[half:])
            return
        for placement in batch:
            order = placement.order
            _settle(placement, None if order.order_id in inserted else _duplicate(order))
        if inserted:
            try:
                self._notify()
            except Exception:
                # Committed all the same; the relay's poll publishes what a notify missed.
                log.exception("oms.placement_notify_failed")

    async def _transaction(self, batch: Sequence[_Placement]) -> set[str]:
        """One transaction: the orders, and the events of those inserted; the ids inserted.
        On PostgreSQL it is one statement in autocommit (one round trip)."""
        async with self._database.single_statement() as conn:
            return await place_orders(
                conn,
                [placement.order for placement in batch],
                [(ORDER_COMMANDS.name, p.order.account_id, p.event) for p in batch],
                self._outbox,
            )


def _duplicate(order: Order) -> DuplicateClientOrderId:
    return DuplicateClientOrderId(
        f"client order id {order.client_order_id!r} is already used by this account"
    )


def _settle(placement: _Placement, error: BaseException | None) -> None:
    if placement.outcome.done():
        return
    if error is None:
        placement.outcome.set_result(None)
    else:
        placement.outcome.set_exception(error)


async def _settled(outcome: asyncio.Future[None]) -> None:
    """Wait until ``outcome`` is set, through any further cancellation (bounded by one
    transaction), and mark its error as seen: the cancelled caller will not read it."""
    while not outcome.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([outcome])
    if not outcome.cancelled():
        outcome.exception()


def _not_a_rows_fault(exc: Exception) -> bool:
    """A lost or unreachable database fails every batch alike: halving would only repeat it."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc.orig, OSError | TimeoutError)
    return isinstance(exc, OSError | TimeoutError)

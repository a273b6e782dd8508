"""Reconciliation with the broker: the orders execution believes live, against the orders the
broker still works.

Execution's own table says which orders are live: the ``broker_orders`` rows not closed. One
pass asks the broker for its open orders, then, for every open row the broker does not have:

* never acknowledged → ``order.rejected`` with code ``NOT_SENT``: the claim was committed and
  no report of the broker ever showed it had the order (the process died before the send, or
  the send timed out and never arrived, or its acknowledgement was lost in a crash: either way
  the broker does not work it now);
* acknowledged → ``order.canceled``: the venue forgot it (the paper venue lives in the worker
  process and restarts empty). For a live broker the verdict is right only if the adapter
  first reports what it missed: an order filled while this process was down is no longer
  open there either. So a live adapter must, on connecting, report the executions since the
  last one recorded (as a FIX session's resend or a broker's executions query gives them)
  BEFORE it answers the open-orders query; the pass then waits for those reports (below),
  they close the order's row, and it is not judged. Without that, such fills would be
  announced as a cancel.

An order the broker has is left alone. Those events release the order's risk reservation and
end it in the OMS, the read model and the owner's stream like any other rejection or cancel.

Guarantees:

* **Fail closed.** If the broker cannot be asked (disconnected, no answer in time), the pass
  changes nothing and says so (None): it never invents an end for an order it could not check.
* **No race with the broker's reports.** The adapter answers after every report it produced
  before answering, and the pass waits (up to ``delivery_timeout``) until the sink took THOSE
  reports (not the ones received since, so a steady flow of reports cannot hold it up); an
  order that filled or was canceled at the broker has its row closed by its own report before
  the pass reads the rows, and is not ended a second time. An order whose earlier report is
  still not recorded when the time is up (its account's reports are being retried) is left
  out of the pass, like the ``skip`` set: the broker knew it, so it is neither "not sent" nor
  for this pass to judge; the next pass (the next start) asks again.
* **Once.** Rows are read, closed and their events written to the outbox in ONE transaction;
  each verdict takes the idempotency key of the broker report it stands for
  (``BrokerRejected:<order>``, ``BrokerCanceled:<order>``), so a second pass, a pass after a
  crash half-way, or a late real report of the same kind publishes nothing twice.

It assumes one execution process per broker connection, which the execution engine enforces
on PostgreSQL with a lock (see :mod:`tradeloom.execution.lock`): an order another process
claimed and is about to send would look never sent here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import structlog

from tradeloom.broker.adapter import BrokerTimeout, BrokerUnavailable
from tradeloom.broker.gateway import BrokerGateway
from tradeloom.broker.reports import BrokerCanceled, BrokerRejected
from tradeloom.domain.time import Clock
from tradeloom.execution.reports import OutboxItem, announcement, report_id
from tradeloom.execution.store import (
    Closing,
    OrderMark,
    SentOrder,
    load_open_orders,
    mark_orders,
    record_report_ids,
)
from tradeloom.observability.metrics import Metrics
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox

log = structlog.get_logger("tradeloom.execution.reconcile")

NOT_SENT = "NOT_SENT"
NOT_SENT_REASON = (
    "never acknowledged by the broker, nor among its open orders when execution started"
)
VENUE_LOST_REASON = "venue restarted; the order is no longer at the broker"
DELIVERY_TIMEOUT = 10.0
"""How long a pass waits for the broker's earlier reports to be recorded; the orders of those
still unrecorded then are left out of the pass."""

_Verdict = BrokerRejected | BrokerCanceled


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What one pass found among the open orders, by order id."""

    not_sent: tuple[str, ...] = ()
    venue_lost: tuple[str, ...] = ()
    at_broker: tuple[str, ...] = ()
    in_transit: tuple[str, ...] = ()
    """Open orders left out because a report of theirs was still not recorded."""


class Reconciler:
    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        gateway: BrokerGateway,
        clock: Clock,
        *,
        notify: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
        delivery_timeout: float = DELIVERY_TIMEOUT,
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._gateway = gateway
        self._clock = clock
        self._notify = notify
        self._metrics = metrics
        self._delivery_timeout = delivery_timeout

    async def reconcile(self, *, skip: Collection[str] = ()) -> Reconciliation | None:
        """One pass over every open order but those in ``skip``; None (logged, counted,
        nothing changed) when the broker could not be asked or the outcome not stored."""
        try:
            answer = await self._gateway.open_orders()
            late = await self._gateway.wait_taken(answer.reports_before, self._delivery_timeout)
        except (BrokerUnavailable, BrokerTimeout) as exc:
            self._failed("execution.reconciliation_broker_unavailable", exc)
            return None
        except Exception as exc:  # an adapter's bug: fail closed all the same
            self._failed("execution.reconciliation_query_failed", exc, trace=True)
            return None
        if late:
            log.warning("execution.reconciliation_reports_in_transit", orders=sorted(late))
        try:
            found = await self._settle(frozenset(answer.orders.order_ids), skip, late)
        except Exception as exc:
            self._failed("execution.reconciliation_not_stored", exc, trace=True)
            return None
        self._observe(found)
        return found

    async def _settle(
        self, at_broker: frozenset[str], skip: Collection[str], late: frozenset[str]
    ) -> Reconciliation:
        """Close the open rows the broker does not have and publish why, in one transaction;
        rows in ``skip`` or ``late`` are not looked at."""
        now = self._clock.now()
        async with self._database.transaction() as conn:
            rows: list[SentOrder] = []
            in_transit: list[str] = []
            for row in await load_open_orders(conn):
                if row.order_id in skip:
                    continue
                if row.order_id in late:
                    in_transit.append(row.order_id)
                else:
                    rows.append(row)
            verdicts = [(row, _verdict(row)) for row in rows if row.order_id not in at_broker]
            keys = {_key(verdict): row.order_id for row, verdict in verdicts}
            fresh = await record_report_ids(conn, keys, now)
            items: list[OutboxItem] = [
                announcement(verdict, row, now)
                for row, verdict in verdicts
                if _key(verdict) in fresh
            ]
            marks = {
                row.order_id: OrderMark(closed_as=_closing(verdict)) for row, verdict in verdicts
            }
            await mark_orders(conn, marks, now)
            await self._outbox.add_many(conn, items)
        if items:
            self._notify()
        # Per order at info (the audit trail: which order, why); the pass's summary is the
        # warning, so a restart that closes thousands of orders is one warning, not thousands.
        for row, verdict in verdicts:
            log.info(
                "execution.reconciled_order",
                order_id=row.order_id,
                account_id=row.account_id,
                outcome=_closing(verdict).value,
                published=_key(verdict) in fresh,
            )
        return Reconciliation(
            not_sent=_ids(verdicts, BrokerRejected),
            venue_lost=_ids(verdicts, BrokerCanceled),
            at_broker=tuple(row.order_id for row in rows if row.order_id in at_broker),
            in_transit=tuple(in_transit),
        )

    def _observe(self, found: Reconciliation) -> None:
        outcomes = {
            Closing.NOT_SENT.value: len(found.not_sent),
            Closing.VENUE_LOST.value: len(found.venue_lost),
            "at_broker": len(found.at_broker),
            "in_transit": len(found.in_transit),
        }
        closed = len(found.not_sent) + len(found.venue_lost)
        (log.warning if closed else log.info)("execution.reconciled", **outcomes)
        if self._metrics is not None:
            for outcome, count in outcomes.items():
                self._metrics.reconciled_orders.labels(outcome).inc(count)

    def _failed(self, message: str, error: Exception, *, trace: bool = False) -> None:
        """Fail closed: nothing was changed; the caller tries again later."""
        log.warning(message, error=repr(error), exc_info=trace)
        if self._metrics is not None:
            self._metrics.reconciliation_failures.inc()


def _verdict(row: SentOrder) -> _Verdict:
    """The broker report an open order the broker does not have stands for."""
    if row.acknowledged:
        return BrokerCanceled(
            order_id=row.order_id, account_id=row.account_id, reason=VENUE_LOST_REASON
        )
    return BrokerRejected(
        order_id=row.order_id, account_id=row.account_id, code=NOT_SENT, reason=NOT_SENT_REASON
    )


def _closing(verdict: _Verdict) -> Closing:
    return Closing.VENUE_LOST if isinstance(verdict, BrokerCanceled) else Closing.NOT_SENT


def _key(verdict: _Verdict) -> str:
    key = report_id(verdict)
    assert key is not None, "a rejection and a cancel always have a key"
    return key


def _ids(verdicts: Sequence[tuple[SentOrder, _Verdict]], kind: type[_Verdict]) -> tuple[str, ...]:
    return tuple(row.order_id for row, verdict in verdicts if isinstance(verdict, kind))

"""Broker reports become order events, exactly once each.

The gateway hands reports here in batches (many accounts at once, each account's reports in
the broker's order). A batch is recorded and turned into its events in ONE transaction with
the outbox, in a fixed number of statements whatever its size: one read of the orders, one
insert of idempotency keys, one update of what was learned of the orders (broker order id,
first acknowledgement, end), one outbox write. On PostgreSQL everything after the read is
one statement in autocommit (``store.record_batch_pg``). A fill is keyed
by its fill id, an acknowledgement, rejection, cancel or expiry by order, so a report repeated
by the broker (in the same batch or a later one, or handled again after a crash) publishes
nothing new. Recording a batch is equivalent to recording its reports one after another: the
first of two reports with one key wins, events go to the outbox in report order (so each
account's events keep the broker's order). Fills become ``order.partially_filled`` or
``order.filled`` with the fill's own id, quantity, price and time; a refused cancel becomes
``order.cancel_rejected`` and a refused amend ``order.replace_rejected``, so the user is told
which of the two requests the broker turned down.

The ``broker_orders`` row of an order is marked acknowledged by its first report that shows
the broker had it (anything but a refused cancel or amend), and closed by the first that ends
it (rejection, cancel, expiry, the fill that leaves nothing): reconciliation at start asks the
broker only about the rows still open, in the same transaction as the events that closed them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

import msgspec
import structlog

from tradeloom.broker.reports import (
    BrokerAccepted,
    BrokerCanceled,
    BrokerCancelRejected,
    BrokerExpired,
    BrokerFill,
    BrokerRejected,
    BrokerReplaced,
    BrokerReplaceRejected,
    BrokerReport,
)
from tradeloom.domain.events import (
    AnyPayload,
    DeadLettered,
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
    new_event,
)
from tradeloom.domain.time import Clock
from tradeloom.execution.store import (
    Closing,
    OrderMark,
    SentOrder,
    load_sent_orders,
    mark_orders,
    record_batch_pg,
    record_report_ids,
)
from tradeloom.messaging.topics import DEAD_LETTER, ORDER_EVENTS
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox

log = structlog.get_logger("tradeloom.execution.reports")

OutboxItem = tuple[str, str, Event]


def report_id(report: BrokerReport) -> str | None:
    """The idempotency key of a report, or None for reports that may legitimately repeat
    (a second replace or a second refused cancel of the same order)."""
    if isinstance(report, BrokerFill):
        return f"fill:{report.fill_id}"
    if isinstance(report, (BrokerReplaced, BrokerCancelRejected, BrokerReplaceRejected)):
        return None
    return f"{type(report).__name__}:{report.order_id}"


class ReportRecorder:
    """The gateway's report sink (:meth:`record_many`)."""

    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        clock: Clock,
        *,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._clock = clock
        self._notify = notify
        self.recorded = 0
        self.duplicates = 0
        self.unknown = 0

    async def record_many(self, reports: Sequence[BrokerReport]) -> None:
        """Record ``reports`` in one transaction (on PostgreSQL one statement after a read):
        all of them or, when it raises, none."""
        if not reports:
            return
        now = self._clock.now()
        if self._database.dialect == "postgresql":
            outcome = await self._record_in_one_statement(reports, now)
        else:
            outcome = await self._record_in_transaction(reports, now)
        self.recorded += len(outcome.items) - outcome.unknown
        self.duplicates += outcome.duplicates
        self.unknown += outcome.unknown
        if outcome.items:
            self._notify()

    async def _record_in_one_statement(
        self, reports: Sequence[BrokerReport], now: datetime
    ) -> _Outcome:
        """PostgreSQL: read the orders, then everything else in one statement (see
        ``store.record_batch_pg``). The read needs no transaction of its own: an order's row
        exists before its first report (the claim commits before the send), and what it says
        of acknowledgement and end only spares marks the statement would not apply anyway."""
        async with self._database.connect() as conn:
            sent = await load_sent_orders(conn, {report.order_id for report in reports})
        keys: dict[str, str] = {}
        candidates: list[tuple[str | None, OutboxItem]] = []
        parked = 0
        repeated = 0  # a key seen earlier in this batch: never announced
        learned = _Outcome()  # only its marks: what is announced depends on the statement
        for report in reports:
            order = sent.get(report.order_id)
            if order is None:
                candidates.append((None, self._parked(report)))
                parked += 1
                continue
            key = report_id(report)
            first = key is None or key not in keys
            if key is not None and first:
                keys[key] = report.order_id
            if first:
                candidates.append((key, self._announced(report, order)))
            else:
                repeated += 1
            learned.learn(order, report, first=first)
        async with self._database.single_statement() as conn:
            fresh = await record_batch_pg(conn, keys, learned.marks, candidates, self._outbox, now)
        outcome = _Outcome(marks=learned.marks, unknown=parked)
        outcome.items = [item for key, item in candidates if key is None or key in fresh]
        outcome.duplicates = repeated + sum(1 for key, _ in candidates if key and key not in fresh)
        return outcome

    async def _record_in_transaction(
        self, reports: Sequence[BrokerReport], now: datetime
    ) -> _Outcome:
        async with self._database.transaction() as conn:
            sent = await load_sent_orders(conn, {report.order_id for report in reports})
            keys = {
                key: report.order_id
                for report in reports
                if report.order_id in sent and (key := report_id(report)) is not None
            }
            fresh = await record_report_ids(conn, keys, now)
            outcome = _Outcome()
            for report in reports:
                order = sent.get(report.order_id)
                if order is None:
                    outcome.items.append(self._parked(report))
                    outcome.unknown += 1
                    continue
                first = _first_time(report, fresh)
                if first:
                    outcome.items.append(self._announced(report, order))
                else:
                    outcome.duplicates += 1
                outcome.learn(order, report, first=first)
            await mark_orders(conn, outcome.marks, now)
            await self._outbox.add_many(conn, outcome.items)
        return outcome

    def _announced(self, report: BrokerReport, sent: SentOrder) -> OutboxItem:
        return announcement(report, sent, self._clock.now())

    def _parked(self, report: BrokerReport) -> OutboxItem:
        """A report for an order execution never sent (another system's order, or a broker
        error): kept in ``dead_letter`` for a person to look at, rather than block every
        later report of its account by refusing it forever."""
        original = msgspec.json.encode({"kind": type(report).__name__, **asdict(report)})
        parked = DeadLettered(
            topic="broker.reports",
            group=None,
            reason="UNKNOWN_ORDER",
            error=f"a broker report for an order never sent: {report.order_id}",
            attempts=1,
            original_event_id=report_id(report) or f"{type(report).__name__}:{report.order_id}",
            original_type=type(report).__name__,
            original=original,
        )
        event = new_event(
            parked,
            occurred_at=self._clock.now(),
            correlation_id=f"broker:{report.order_id}",
            account_id=report.account_id,
        )
        log.error("execution.report_for_unknown_order", order_id=report.order_id)
        return DEAD_LETTER.name, report.account_id, event


@dataclass(slots=True)
class _Outcome:
    """What recording one batch produced, applied to the counters once it committed."""

    items: list[OutboxItem] = field(default_factory=list)
    marks: dict[str, OrderMark] = field(default_factory=dict)
    duplicates: int = 0
    unknown: int = 0

    def learn(self, order: SentOrder, report: BrokerReport, *, first: bool) -> None:
        """Note what ``report`` tells of ``order`` that its row does not say yet (duplicates
        included: they heal a row the first report left unmarked). The broker id comes from
        the first acknowledgement only, as before."""
        acknowledges, closing = _learned(report)
        mark = self.marks.get(order.order_id)
        if first and isinstance(report, BrokerAccepted):
            mark = mark or OrderMark()
            mark.broker_order_id = report.broker_order_id
        if acknowledges and not order.acknowledged:
            mark = mark or OrderMark()
            mark.acknowledged = True
        if closing is not None and not order.closed and (mark is None or not mark.closed_as):
            mark = mark or OrderMark()
            mark.closed_as = closing
        if mark is not None:
            self.marks[order.order_id] = mark


_CLOSINGS: dict[type[BrokerReport], Closing] = {
    BrokerRejected: Closing.REJECTED,
    BrokerCanceled: Closing.CANCELED,
    BrokerExpired: Closing.EXPIRED,
}


def _learned(report: BrokerReport) -> tuple[bool, Closing | None]:
    """Whether ``report`` shows the broker had the order, and how it ended it (None: not).
    A refused cancel or amend shows neither: "unknown order" is a refusal too."""
    if isinstance(report, (BrokerCancelRejected, BrokerReplaceRejected)):
        return False, None
    if isinstance(report, BrokerFill):
        return True, Closing.FILLED if report.leaves_quantity == 0 else None
    return True, _CLOSINGS.get(type(report))


def _first_time(report: BrokerReport, fresh: set[str]) -> bool:
    """Whether ``report`` is to be announced: reports without a key always are; of the
    reports with a key just recorded, the first in the batch is, and it takes the key."""
    key = report_id(report)
    if key is None:
        return True
    if key in fresh:
        fresh.discard(key)
        return True
    return False


def announcement(report: BrokerReport, sent: SentOrder, occurred_at: datetime) -> OutboxItem:
    """The outbox item of the order event that announces ``report``, in the order's
    correlation, caused by the command that sent it, keyed by its account."""
    event = new_event(
        to_payload(report, sent),
        occurred_at=occurred_at,
        correlation_id=sent.correlation_id,
        causation_id=sent.causation_id,
        account_id=sent.account_id,
    )
    return ORDER_EVENTS.name, sent.account_id, event


def to_payload(report: BrokerReport, sent: SentOrder) -> AnyPayload:
    """The order event that announces ``report``."""
    if isinstance(report, BrokerAccepted):
        return OrderAccepted(order_id=report.order_id, broker_order_id=report.broker_order_id)
    if isinstance(report, BrokerRejected):
        return OrderRejected(order_id=report.order_id, code=report.code, reason=report.reason)
    if isinstance(report, BrokerFill):
        kind = OrderFilled if report.leaves_quantity == 0 else OrderPartiallyFilled
        return kind(
            order_id=report.order_id,
            fill_id=report.fill_id,
            symbol=sent.symbol,
            side=sent.side,
            quantity=report.quantity,
            price=report.price,
            fee=report.fee,
            filled_at=report.filled_at,
            cumulative_quantity=report.cumulative_quantity,
            leaves_quantity=report.leaves_quantity,
        )
    if isinstance(report, BrokerCanceled):
        return OrderCanceled(order_id=report.order_id, reason=report.reason)
    if isinstance(report, BrokerCancelRejected):
        return OrderCancelRejected(order_id=report.order_id, reason=report.reason)
    if isinstance(report, BrokerReplaceRejected):
        return OrderReplaceRejected(order_id=report.order_id, reason=report.reason)
    if isinstance(report, BrokerExpired):
        return OrderExpired(order_id=report.order_id)
    if isinstance(report, BrokerReplaced):
        return OrderReplaced(
            order_id=report.order_id,
            quantity=report.quantity,
            limit_price=report.limit_price,
            stop_price=report.stop_price,
        )
    raise TypeError(f"unknown broker report {report!r}")

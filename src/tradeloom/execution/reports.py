"""Broker reports become order events, exactly once each.

The gateway hands every report here (one account at a time, in the broker's order). Each is
recorded and turned into its event in ONE transaction with the outbox: a fill by its fill id,
an acknowledgement, rejection, cancel or expiry by order, so a report repeated by the broker
(or handled again after a crash) publishes nothing new. Fills become
``order.partially_filled`` or ``order.filled`` with the fill's own id, quantity, price and time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import msgspec
import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

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
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderReplaced,
    new_event,
)
from tradeloom.domain.orders import Side
from tradeloom.domain.time import Clock
from tradeloom.messaging.topics import DEAD_LETTER, ORDER_EVENTS
from tradeloom.storage.database import Database, insert_if_absent
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import broker_orders, broker_reports

log = structlog.get_logger("tradeloom.execution.reports")


@dataclass(frozen=True, slots=True)
class SentOrder:
    """What execution remembers of an order it sent: enough to describe its fills."""

    order_id: str
    account_id: str
    symbol: str
    side: Side
    correlation_id: str
    causation_id: str


def report_id(report: BrokerReport) -> str | None:
    """The idempotency key of a report, or None for reports that may legitimately repeat
    (a second replace or a second refused cancel of the same order)."""
    if isinstance(report, BrokerFill):
        return f"fill:{report.fill_id}"
    if isinstance(report, (BrokerReplaced, BrokerCancelRejected, BrokerReplaceRejected)):
        return None
    return f"{type(report).__name__}:{report.order_id}"


async def load_sent_order(conn: AsyncConnection, order_id: str) -> SentOrder | None:
    row = (
        await conn.execute(select(broker_orders).where(broker_orders.c.order_id == order_id))
    ).first()
    if row is None:
        return None
    m = row._mapping
    return SentOrder(
        m["order_id"],
        m["account_id"],
        m["symbol"],
        Side(m["side"]),
        m["correlation_id"],
        m["causation_id"],
    )


class ReportRecorder:
    """The gateway's report sink."""

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

    async def record(self, report: BrokerReport) -> None:
        async with self._database.transaction() as conn:
            sent = await load_sent_order(conn, report.order_id)
            if sent is None:
                await self._park_unknown(conn, report)
                return
            if not await self._first_time(conn, report):
                self.duplicates += 1
                return
            if isinstance(report, BrokerAccepted):
                await conn.execute(
                    update(broker_orders)
                    .where(broker_orders.c.order_id == report.order_id)
                    .values(broker_order_id=report.broker_order_id)
                )
            event = new_event(
                to_payload(report, sent),
                occurred_at=self._clock.now(),
                correlation_id=sent.correlation_id,
                causation_id=sent.causation_id,
                account_id=sent.account_id,
            )
            await self._outbox.add(conn, ORDER_EVENTS.name, sent.account_id, event)
        self.recorded += 1
        self._notify()

    async def _park_unknown(self, conn: AsyncConnection, report: BrokerReport) -> None:
        """A report for an order execution never sent (another system's order, or a broker
        error): keep it in ``dead_letter`` for a person to look at, rather than block every
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
        await self._outbox.add(conn, DEAD_LETTER.name, report.account_id, event)
        self.unknown += 1
        log.error("execution.report_for_unknown_order", order_id=report.order_id)

    async def _first_time(self, conn: AsyncConnection, report: BrokerReport) -> bool:
        key = report_id(report)
        if key is None:
            return True
        row = {"report_id": key, "order_id": report.order_id, "received_at": self._clock.now()}
        return await insert_if_absent(conn, broker_reports, row)


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
    if isinstance(report, (BrokerCancelRejected, BrokerReplaceRejected)):
        return OrderCancelRejected(order_id=report.order_id, reason=report.reason)
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

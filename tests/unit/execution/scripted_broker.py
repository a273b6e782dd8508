"""``ScriptedBroker``: a broker adapter the execution tests drive by hand.

It takes requests in order and answers each at once, or (``answering`` off) on ``release``,
from the loop's thread, through the gateway's thread seam all the same. It keeps a book of
the orders it works, so it answers open-orders queries like a venue: after every report it
produced before (held reports go out first), unless ``silent`` (no answer at all: the
gateway times out) or ``failing`` (the query cannot be handed over). With ``lagging`` on, a
request is handed over but still on its way: the venue has not got it (its book and queries
do not show it) until ``arrive``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from tradeloom.broker.adapter import OpenOrdersCallback, ReportCallback
from tradeloom.broker.reports import (
    AmendRequest,
    BrokerAccepted,
    BrokerCanceled,
    BrokerReplaced,
    BrokerReport,
    CancelRequest,
    OpenOrders,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate

Request = SubmitOrder | CancelRequest | AmendRequest


class ScriptedBroker:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answering = True
        self.failing = False
        self.silent = False
        self.lagging = False
        self.queries = 0
        self.working: list[str] = []
        self._held: list[BrokerReport] = []
        self._on_the_wire: list[tuple[BrokerReport, Callable[[], None]]] = []
        self._on_report: ReportCallback | None = None

    def start(self, on_report: ReportCallback) -> None:
        self._on_report = on_report

    def stop(self) -> None:
        self._on_report = None

    def submit(self, request: SubmitOrder) -> None:
        answer = BrokerAccepted(
            order_id=request.order_id,
            account_id=request.account_id,
            broker_order_id=f"B-{request.order_id}",
        )
        self._take(request, answer, lambda: self.working.append(request.order_id))

    def cancel(self, request: CancelRequest) -> None:
        answer = BrokerCanceled(
            order_id=request.order_id, account_id=request.account_id, reason="by request"
        )
        self._take(request, answer, lambda: self._forget(request.order_id))

    def amend(self, request: AmendRequest) -> None:
        quantity = request.quantity or Decimal(1)
        answer = BrokerReplaced(
            order_id=request.order_id, account_id=request.account_id, quantity=quantity
        )
        self._take(request, answer, lambda: None)

    def query_open_orders(self, on_answer: OpenOrdersCallback) -> None:
        if self.failing:
            raise ConnectionError("broker link down")
        self.queries += 1
        if self.silent:
            return
        self.release()
        on_answer(OpenOrders(order_ids=tuple(self.working)))

    def on_price(self, update: PriceUpdate) -> None:
        pass

    def report(self, report: BrokerReport) -> None:
        """Queue a report of the venue's own (a fill, an expiry), sent with the next release."""
        self._held.append(report)
        if self.answering:
            self.release()

    def release(self) -> None:
        held, self._held = self._held, []
        for report in held:
            assert self._on_report is not None
            self._on_report(report)

    def arrive(self) -> None:
        """The requests on their way reach the venue: it takes them and answers."""
        arriving, self._on_the_wire = self._on_the_wire, []
        for answer, effect in arriving:
            self._land(answer, effect)

    def _take(self, request: Request, answer: BrokerReport, effect: Callable[[], None]) -> None:
        if self.failing:
            raise ConnectionError("broker link down")
        self.requests.append(request)
        if self.lagging:
            self._on_the_wire.append((answer, effect))
            return
        self._land(answer, effect)

    def _land(self, answer: BrokerReport, effect: Callable[[], None]) -> None:
        effect()
        self._held.append(answer)
        if self.answering:
            self.release()

    def _forget(self, order_id: str) -> None:
        if order_id in self.working:
            self.working.remove(order_id)

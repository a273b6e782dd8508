"""The ``BrokerAdapter`` port: the one shape every broker (paper, replay, live) takes.

Requests go in through non-blocking calls; every answer comes back later as a report through
the callback given to ``start``. The callback may run on ANY thread (broker SDKs call back on
their own), so whoever receives it must hand the report over to its own thread or loop: the
gateway does that with ``loop.call_soon_threadsafe``.

Guarantees an adapter gives (the contract suite proves them):

* every order request (submit, cancel, amend) is answered by at least one report, never by a
  return value;
* reports of one order come in the order the venue produced them;
* ``submit``/``cancel``/``amend``/``query_open_orders`` raise only when the request could not
  be handed to the broker at all (disconnected, stopped); a refusal by the venue is a report;
* an open-orders query is answered once, through the callback given with it (on any thread),
  and AFTER every report the broker produced before answering was passed to ``on_report``:
  what the answer leaves out has either never reached the broker, or its last report has
  already been handed over. Execution's reconciliation at start relies on that order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tradeloom.broker.reports import (
    AmendRequest,
    BrokerReport,
    CancelRequest,
    OpenOrders,
    SubmitOrder,
)
from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import PriceUpdate

ReportCallback = Callable[[BrokerReport], None]
OpenOrdersCallback = Callable[[OpenOrders], None]


class BrokerAdapter(Protocol):
    def start(self, on_report: ReportCallback) -> None:
        """Connect and begin reporting; ``on_report`` may be called from any thread."""
        ...

    def stop(self) -> None:
        """Disconnect; no report is delivered once this returns."""
        ...

    def submit(self, request: SubmitOrder) -> None: ...

    def cancel(self, request: CancelRequest) -> None: ...

    def amend(self, request: AmendRequest) -> None: ...

    def query_open_orders(self, on_answer: OpenOrdersCallback) -> None:
        """Ask which orders the broker still works; ``on_answer`` gets the :class:`OpenOrders`
        later, from any thread (a real broker's query is a network round trip). Every report
        the adapter produced before it answers must have gone to the callbacks first; a live
        adapter reports on connecting the executions it missed while disconnected, so an
        order filled meanwhile is closed by its fills before reconciliation sees it missing
        (see :mod:`tradeloom.execution.reconcile`)."""
        ...

    def on_price(self, update: PriceUpdate) -> None:
        """Market data for adapters that simulate a venue; a no-op for real brokers."""
        ...


class BrokerUnavailable(DomainError):
    """The broker cannot take requests now (circuit open, disconnected, stopped).

    The execution engine dead-letters the order with reason ``BROKER_UNAVAILABLE``.
    """

    code = "broker_unavailable"


class BrokerTimeout(DomainError):
    """No answer within the gateway's timeout. The order is NOT forgotten: any later report
    for it still reaches the report sink."""

    code = "broker_timeout"

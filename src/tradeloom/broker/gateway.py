"""The broker gateway: the bridge between a broker's callback thread and the event loop.

What it guarantees:

* **Thread seam.** The broker's thread does one thing only: ``loop.call_soon_threadsafe``.
  Every future, queue and task is touched on the loop, never from the broker's thread.
* **Nothing is lost.** EVERY report reaches ``report_sink`` exactly once, whether or not a
  caller was still waiting for it: a late ack after a timeout, the 2nd and 3rd partial fill,
  a fill nobody asked about. A sink that raises is logged, counted and retried (with capped
  backoff) until it takes the report: per-account order forbids skipping one. With a
  ``dead_letter`` sink, a report refused ``dead_letter_after`` times on its own goes there
  instead, so a poisoned report cannot block its account forever (see ``AccountDispatcher``).
* **Order per account, in batches.** ``report_sink`` takes batches of up to
  ``sink_max_batch`` reports of many accounts at once, in the order the broker produced them;
  an account whose reports the sink refuses is delivered one report at a time, behind its
  earlier ones, while the other accounts keep being batched.
* **Answers.** ``submit``/``cancel``/``amend`` wait (with a timeout) for the first report
  that answers them (see ``ANSWERS``) and return it. The return value is for flow control
  only: publishing is the sink's job, so never publish from it too. It may return before the
  sink has been given the same report. Each call hands its request to the adapter before it
  first suspends, so calls started in order (tasks created in order) reach the broker in that
  order: the execution engine relies on it to send a batch's commands concurrently.
* **Open orders.** :meth:`open_orders` asks the broker which orders it still works; the
  answer comes on the broker's thread and resolves a future on the loop the same way reports
  do. The adapter answers after every report it produced before answering, and both cross
  the seam in one ``call_soon_threadsafe`` sequence, so when the call returns those reports
  are queued for the sink. The answer says how many reports were received before it, and
  :meth:`wait_taken` waits (bounded) for THOSE only, not for reports received since, and
  names the orders whose earlier reports the sink has still not taken.
* **Fail fast.** Timeouts and adapter errors of order requests feed a circuit breaker; while
  it is open they raise :class:`BrokerUnavailable` at once, without reaching the broker.
  Open-orders queries are kept out of it: they neither count as failures nor take the
  half-open trial (a broken query path must not dead-letter orders the broker would take);
  they have their own ``query_timeout`` and failure count (``query_failures``).
* **Adaptive timeout.** Latency from submit to the first report of the order is measured on
  the injected clock (late answers included); while its p95 over the recent window exceeds
  ``slow_latency`` (2 s), the timeout is ``slow_timeout`` (30 s) instead of ``timeout`` (10 s),
  so a slow but alive broker is waited for before the breaker opens.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog

from tradeloom.broker.adapter import (
    BrokerAdapter,
    BrokerTimeout,
    BrokerUnavailable,
    OpenOrdersCallback,
)
from tradeloom.broker.dispatch import (
    DEFAULT_MAX_BATCH,
    AccountDispatcher,
    ReportBatchSink,
    ReportSink,
)
from tradeloom.broker.latency import LatencyWindow
from tradeloom.broker.reports import (
    ANSWERS,
    AmendRequest,
    BrokerReport,
    BrokerRequest,
    CancelRequest,
    OpenOrders,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.time import Clock
from tradeloom.resilience.circuit_breaker import CircuitBreaker, CircuitState

log = structlog.get_logger("tradeloom.broker.gateway")

_MAX_UNANSWERED = 100_000
_Waiter = tuple[type[BrokerRequest], "asyncio.Future[BrokerReport]"]
R = TypeVar("R", SubmitOrder, CancelRequest, AmendRequest)


@dataclass(frozen=True, slots=True)
class OpenOrdersAnswer:
    """The broker's open orders, and how many reports the gateway had received when the
    answer arrived: every report the broker produced before answering is among those
    (``reports_before`` is a mark for :meth:`BrokerGateway.wait_taken`)."""

    orders: OpenOrders
    reports_before: int


class BrokerGateway:
    """One per broker connection. ``report_sink`` gets every report, in batches (per-account
    order);
    ``observe_latency`` (e.g. a histogram's ``observe``) gets each submit → first-report
    latency in seconds; ``clock`` times those latencies and the breaker's cool-down, while the
    timeouts themselves run on the loop's time."""

    def __init__(
        self,
        adapter: BrokerAdapter,
        report_sink: ReportBatchSink,
        *,
        breaker: CircuitBreaker,
        clock: Clock,
        timeout: float = 10.0,
        query_timeout: float = 10.0,
        slow_timeout: float = 30.0,
        slow_latency: float = 2.0,
        latency_window: int = 200,
        sink_max_batch: int = DEFAULT_MAX_BATCH,
        sink_retry_delay: float = 0.05,
        sink_retry_max_delay: float = 2.0,
        dead_letter: ReportSink | None = None,
        dead_letter_after: int = 10,
        observe_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._adapter = adapter
        self._breaker = breaker
        self._clock = clock
        self._timeout = timeout
        self._query_timeout = query_timeout
        self._slow_timeout = slow_timeout
        self._slow_latency = slow_latency
        self._latencies = LatencyWindow(latency_window)
        self._observe_latency = observe_latency
        self._sink = report_sink
        self._dead_letter = dead_letter
        self._dispatcher = AccountDispatcher(
            self._to_sink,
            max_batch=sink_max_batch,
            retry_delay=sink_retry_delay,
            retry_max_delay=sink_retry_max_delay,
            dead_letter=None if dead_letter is None else self._to_dead_letter,
            dead_letter_after=dead_letter_after,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, list[_Waiter]] = {}
        self._queries: set[asyncio.Future[OpenOrdersAnswer]] = set()
        self._sent_at: dict[str, datetime] = {}
        # Per order, the numbers (1, 2, ... in arrival order) of its reports received and not
        # yet taken by the sink; an order's reports are taken in arrival order, so the first
        # is the oldest still in transit. ``_progress`` exists only while someone waits for
        # takes (a reconciliation pass): it is set and dropped at the next take, so the report
        # path allocates nothing for it the rest of the time.
        self._in_transit: dict[str, deque[int]] = {}
        self._progress: asyncio.Event | None = None
        self.reports_received = 0
        self.query_failures = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._adapter.start(self._report_from_broker)

    async def stop(self, drain_within: float = 10.0) -> None:
        """Stop the adapter, then deliver every report already received (up to
        ``drain_within`` seconds; what is left then is logged as undelivered). Calls still
        waiting raise :class:`BrokerTimeout`: their requests were sent, the outcome is unknown."""
        await asyncio.to_thread(self._adapter.stop)
        await asyncio.sleep(0)  # let reports handed over by the broker thread land
        await self._dispatcher.close(drain_within)
        for waiters in self._waiters.values():
            for _, future in waiters:
                if not future.done():  # sent, outcome unknown: a timeout, not "unavailable"
                    future.set_exception(BrokerTimeout("the gateway stopped before an answer"))
        self._waiters.clear()
        for query in self._queries:
            if not query.done():
                query.set_exception(BrokerTimeout("the gateway stopped before an answer"))
        self._queries.clear()
        self._in_transit.clear()  # what the dispatcher gave up on is no longer awaited
        self._made_progress()
        self._loop = None

    async def wait_delivered(self) -> None:
        """Return once every report received so far has been taken by the sink."""
        await self._dispatcher.wait_delivered()

    async def wait_taken(self, reports_before: int, within: float) -> frozenset[str]:
        """Wait up to ``within`` seconds until the sink (or the dead letter) has taken every
        report among the first ``reports_before`` received; reports received later are not
        waited for, so a steady flow of reports cannot hold this up. Return the orders that
        still have such a report in transit when the time is up (empty: all taken)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while late := self._in_transit_before(reports_before):
            if self._progress is None:
                self._progress = asyncio.Event()
            progress = self._progress
            remaining = deadline - loop.time()
            if remaining <= 0:
                return late
            try:
                async with asyncio.timeout(remaining):
                    await progress.wait()
            except TimeoutError:
                return self._in_transit_before(reports_before)
        return frozenset()

    @property
    def reports_delivered(self) -> int:
        return self._dispatcher.delivered

    @property
    def sink_failures(self) -> int:
        return self._dispatcher.failures

    @property
    def reports_dead_lettered(self) -> int:
        return self._dispatcher.dead_lettered

    # -- requests ---------------------------------------------------------------------------

    async def submit(self, request: SubmitOrder) -> BrokerReport:
        """Send an order; return the first report that answers it.

        Raises :class:`BrokerTimeout` (the order stays tracked: later reports still reach the
        sink) or :class:`BrokerUnavailable` (breaker open, or the adapter refused the call).
        """
        return await self._call(request, self._adapter.submit)

    async def cancel(self, request: CancelRequest) -> BrokerReport:
        return await self._call(request, self._adapter.cancel)

    async def amend(self, request: AmendRequest) -> BrokerReport:
        return await self._call(request, self._adapter.amend)

    async def open_orders(self) -> OpenOrdersAnswer:
        """The orders the broker still works, by our order id. Every report the broker
        produced before answering has been received (queued for the sink) when this returns,
        and is among the answer's ``reports_before``.

        Raises :class:`BrokerTimeout` (no answer within ``query_timeout``) or
        :class:`BrokerUnavailable` (the adapter refused the query). Neither touches the order
        breaker, nor does an open breaker stop the query: both are counted in
        ``query_failures``.
        """
        if self._loop is None:
            self.query_failures += 1
            raise BrokerUnavailable("the broker gateway is not started")
        future: asyncio.Future[OpenOrdersAnswer] = self._loop.create_future()
        self._queries.add(future)
        try:
            try:
                self._adapter.query_open_orders(self._answer_from_broker(self._loop, future))
            except Exception as exc:
                # A warning, not a traceback: a broker that refuses queries is retried up to
                # once a minute for as long as it does, and the error says what it refused.
                self.query_failures += 1
                log.warning("broker.open_orders_refused", error=repr(exc))
                raise BrokerUnavailable(f"the broker refused the query: {exc}") from exc
            timeout = self._query_timeout
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                self.query_failures += 1
                log.warning("broker.open_orders_timeout", timeout=timeout)
                raise BrokerTimeout(f"no open orders from the broker within {timeout}s") from None
        finally:
            self._queries.discard(future)

    def on_price(self, update: PriceUpdate) -> None:
        self._adapter.on_price(update)

    @property
    def circuit_closed(self) -> bool:
        """True while calls go through freely; otherwise they are refused, or one trial at a
        time is let through (half-open)."""
        return self._breaker.state is CircuitState.CLOSED

    @property
    def current_timeout(self) -> float:
        p95 = self._latencies.p95()
        slow = p95 is not None and p95 > self._slow_latency
        return self._slow_timeout if slow else self._timeout

    @property
    def latency_p95(self) -> float | None:
        """p95 of submit → first report, in seconds; None until enough samples."""
        return self._latencies.p95()

    async def _call(self, request: R, send: Callable[[R], None]) -> BrokerReport:
        if self._loop is None:
            raise BrokerUnavailable("the broker gateway is not started")
        if not self._breaker.allow():
            raise BrokerUnavailable(f"broker circuit is {self._breaker.state}")
        future: asyncio.Future[BrokerReport] = self._loop.create_future()
        waiter: _Waiter = (type(request), future)
        self._waiters.setdefault(request.order_id, []).append(waiter)
        if isinstance(request, SubmitOrder):
            self._track_latency(request.order_id)
        try:  # no await before this send: calls reach the broker in the order they started
            send(request)
        except Exception as exc:
            self._forget(request.order_id, waiter)
            self._breaker.record_failure()
            log.exception("broker.request_failed", order_id=request.order_id)
            raise BrokerUnavailable(f"the broker refused the request: {exc}") from exc
        return await self._await_answer(request, waiter)

    async def _await_answer(self, request: BrokerRequest, waiter: _Waiter) -> BrokerReport:
        timeout = self.current_timeout
        try:
            async with asyncio.timeout(timeout):
                report = await waiter[1]
        except TimeoutError:
            self._forget(request.order_id, waiter)
            self._breaker.record_failure()
            log.warning("broker.timeout", order_id=request.order_id, timeout=timeout)
            raise BrokerTimeout(
                f"no answer from the broker for order {request.order_id} within {timeout}s"
            ) from None
        except asyncio.CancelledError:
            self._forget(request.order_id, waiter)
            raise
        self._breaker.record_success()
        return report

    def _track_latency(self, order_id: str) -> None:
        """Remember when ``order_id`` was sent, until its first report (late ones included).
        Orders the broker never answers at all are dropped oldest first past a bound."""
        self._sent_at.setdefault(order_id, self._clock.now())
        if len(self._sent_at) > _MAX_UNANSWERED:
            del self._sent_at[next(iter(self._sent_at))]

    def _forget(self, order_id: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(order_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(order_id, None)

    # -- reports ----------------------------------------------------------------------------

    def _report_from_broker(self, report: BrokerReport) -> None:
        """Runs on the BROKER'S thread (any thread).

        ASYNC/SYNC SEAM: the only thing done here is handing the report to the event loop with
        ``call_soon_threadsafe``; no asyncio object is touched from this thread. Calls from one
        thread run on the loop in the order they were made, which keeps the broker's order.
        """
        loop = self._loop
        if loop is None:
            log.error("broker.report_while_stopped", report=repr(report))
            return
        try:
            loop.call_soon_threadsafe(self._receive, report)
        except RuntimeError:
            log.error("broker.report_after_loop_closed", report=repr(report))

    def _answer_from_broker(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[OpenOrdersAnswer]
    ) -> OpenOrdersCallback:
        """The callback an open-orders answer comes back through, on the BROKER'S thread.

        ASYNC/SYNC SEAM: as for reports, the broker's thread only hands the answer to the loop
        with ``call_soon_threadsafe``, behind the reports it handed over before."""

        def on_answer(answer: OpenOrders) -> None:
            try:
                loop.call_soon_threadsafe(self._settle, future, answer)
            except RuntimeError:
                log.error("broker.answer_after_loop_closed", answer=repr(answer))

        return on_answer

    def _settle(self, future: asyncio.Future[OpenOrdersAnswer], answer: OpenOrders) -> None:
        """On the loop: resolve a query unless it already ended (timed out, gateway stopped),
        marking how many reports came before the answer."""
        if not future.done():
            future.set_result(OpenOrdersAnswer(answer, self.reports_received))

    def _receive(self, report: BrokerReport) -> None:
        """On the loop: answer whoever waits, measure latency, queue for the sink."""
        self.reports_received += 1
        numbers = self._in_transit.get(report.order_id)
        if numbers is None:
            self._in_transit[report.order_id] = deque((self.reports_received,))
        else:
            numbers.append(self.reports_received)
        sent_at = self._sent_at.pop(report.order_id, None)
        if sent_at is not None:
            seconds = (self._clock.now() - sent_at).total_seconds()
            self._latencies.add(seconds)
            if self._observe_latency is not None:
                self._observe_latency(seconds)
        self._answer_waiters(report)
        self._dispatcher.put(report)

    def _answer_waiters(self, report: BrokerReport) -> None:
        waiters = self._waiters.get(report.order_id)
        if not waiters:
            return
        answered = [w for w in waiters if isinstance(report, ANSWERS[w[0]])]
        for waiter in answered:
            waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(report)
        if not waiters:
            del self._waiters[report.order_id]

    # -- delivery -----------------------------------------------------------------------------

    async def _to_sink(self, reports: Sequence[BrokerReport]) -> None:
        await self._sink(reports)
        self._taken(reports)

    async def _to_dead_letter(self, report: BrokerReport) -> None:
        assert self._dead_letter is not None
        await self._dead_letter(report)
        self._taken([report])

    def _taken(self, reports: Sequence[BrokerReport]) -> None:
        """On the loop: ``reports`` left transit, each the oldest of its order still in it."""
        for report in reports:
            numbers = self._in_transit.get(report.order_id)
            if numbers:
                numbers.popleft()
                if not numbers:
                    del self._in_transit[report.order_id]
        self._made_progress()

    def _made_progress(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.set()

    def _in_transit_before(self, reports_before: int) -> frozenset[str]:
        return frozenset(
            order_id
            for order_id, numbers in self._in_transit.items()
            if numbers[0] <= reports_before
        )

"""The paper broker: a simulated venue on its own thread, behaving like a real broker SDK.

Every request, price and control goes into one FIFO queue; the broker's thread takes them in
order, runs the venue (``PaperVenue``) and calls ``on_report`` FROM THAT THREAD, like IB or a
FIX engine would. Requests are delayed by ``latency`` seconds (plus a seeded random jitter)
on the broker's thread; prices are not delayed but never overtake earlier requests.

The venue lives in this process: a new ``PaperBroker`` (a restarted worker) knows no order of
the previous one. ``query_open_orders`` says so, and execution's reconciliation at start
cancels what the old venue held.

For tests: ``drain()`` blocks until everything queued before it was processed and reported,
so no sleeps are needed; with ``latency=0`` and an injected clock every run is identical.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import time as time_of_day
from decimal import Decimal
from functools import partial

import structlog

from tradeloom.broker.adapter import BrokerUnavailable, OpenOrdersCallback, ReportCallback
from tradeloom.broker.paper_venue import PaperVenue
from tradeloom.broker.reports import AmendRequest, BrokerReport, CancelRequest, SubmitOrder
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import Instrument
from tradeloom.domain.numbers import ZERO
from tradeloom.domain.time import Clock

log = structlog.get_logger("tradeloom.broker.paper")

_Action = Callable[[], list[BrokerReport]]
_Item = tuple[float, _Action] | None  # (monotonic due time, action); None stops the thread


class PaperBroker:
    def __init__(
        self,
        instruments: Iterable[Instrument],
        clock: Clock,
        *,
        latency: float = 0.0,
        latency_jitter: float = 0.0,
        slippage_ticks: int = 0,
        displayed_quantity: Decimal = Decimal(100),
        session_close: time_of_day = time_of_day(21, 0),
        fee_per_unit: Decimal = ZERO,
        seed: int = 0,
    ) -> None:
        self._venue = PaperVenue(
            instruments,
            clock,
            slippage_ticks=slippage_ticks,
            displayed_quantity=displayed_quantity,
            session_close=session_close,
            fee_per_unit=fee_per_unit,
        )
        self._latency = latency
        self._jitter = latency_jitter
        self._rng = random.Random(seed)
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._on_report: ReportCallback | None = None

    # -- BrokerAdapter ----------------------------------------------------------------------

    def start(self, on_report: ReportCallback) -> None:
        if self._thread is not None:
            raise RuntimeError("the paper broker is already started")
        self._on_report = on_report
        self._thread = threading.Thread(target=self._run, name="paper-broker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def submit(self, request: SubmitOrder) -> None:
        self._put(partial(self._venue.submit, request), delayed=True)

    def cancel(self, request: CancelRequest) -> None:
        self._put(partial(self._venue.cancel, request), delayed=True)

    def amend(self, request: AmendRequest) -> None:
        self._put(partial(self._venue.amend, request), delayed=True)

    def query_open_orders(self, on_answer: OpenOrdersCallback) -> None:
        """Answered from the venue's book on the broker's thread, after everything queued
        before it (and so after every report produced before it), with a request's latency."""
        self._put(partial(self._answer_open_orders, on_answer), delayed=True)

    def on_price(self, update: PriceUpdate) -> None:
        self._put(partial(self._venue.on_price, update))

    def on_prices(self, updates: Sequence[PriceUpdate]) -> None:
        """A batch in one hand-over: one queue put instead of one per update."""
        self._put(partial(self._venue.on_prices, tuple(updates)))

    # -- venue controls ---------------------------------------------------------------------

    def halt(self, symbol: str) -> None:
        """Halt trading in ``symbol``: new orders are rejected, resting ones stop matching."""
        self._put(partial(self._venue.halt, symbol))

    def resume(self, symbol: str) -> None:
        self._put(partial(self._venue.resume, symbol))

    def check_expiry(self) -> None:
        """Expire DAY orders whose session close has passed on the clock."""
        self._put(self._venue.check_expiry)

    def drain(self, within: float = 5.0) -> None:
        """Block until everything queued before this call was processed and reported."""
        done = threading.Event()

        def mark() -> list[BrokerReport]:
            done.set()
            return []

        self._put(mark)
        if not done.wait(within):
            raise TimeoutError(f"the paper broker did not drain within {within}s")

    # -- the broker's thread ----------------------------------------------------------------

    def _put(self, action: _Action, *, delayed: bool = False) -> None:
        if self._thread is None:
            raise BrokerUnavailable("the paper broker is not running")
        due = time.monotonic()
        if delayed and (self._latency or self._jitter):
            due += self._latency + self._rng.uniform(0.0, self._jitter)
        self._queue.put((due, action))

    def _run(self) -> None:
        """The broker's own thread: the only one that touches the venue."""
        while (item := self._queue.get()) is not None:
            due, action = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the simulated network latency, on the broker's thread
            try:
                reports = action()
            except Exception:
                log.exception("paper_broker.action_failed")
                continue
            for report in reports:
                self._emit(report)

    def _answer_open_orders(self, on_answer: OpenOrdersCallback) -> list[BrokerReport]:
        answer = self._venue.open_orders()
        try:
            on_answer(answer)
        except Exception:
            log.exception("paper_broker.answer_callback_failed")
        return []

    def _emit(self, report: BrokerReport) -> None:
        assert self._on_report is not None
        try:
            self._on_report(report)
        except Exception:
            log.exception("paper_broker.callback_failed", order_id=report.order_id)

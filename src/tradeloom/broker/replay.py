"""The replay broker: plays back a recording (``RecordingAdapter``) deterministically.

The recording is cut into steps: one input (submit, cancel, amend, price or open-orders query)
and the outputs (reports, answers to queries) recorded after it, up to the next input. When
the replay receives an input it compares it with the next recorded one; on a match it reports
that step's outputs, from its OWN thread like a real broker. Order and account ids may differ
from the recording: the first submit of a recorded id binds it to the id used now, and every
later input and output is translated through that binding. Anything else that differs is a
divergence: the call raises :class:`ReplayDivergence` saying what was expected, and so does
every call after it, since the recording no longer describes this session.

Reports that in the recording trailed the last input follow it here too. A recording whose
reports lagged behind later inputs replays them later in the same way: the sequence of
reports is always the recorded one.

An open-orders query is an input like the others: the replay answers it with what the recorded
broker answered at that point of the session (its order ids translated), not with a book of
its own, so a recording of a venue that had forgotten orders (a restart) replays as one. Each
answer goes to the oldest query still unanswered, in the recorded place among the reports.

Queries are only as deterministic as the session that made them. Execution asks once when it
becomes active, but when that query fails it retries in the background on a timer, so how
many queries a session makes, and where they fall among the other inputs, depends on timing.
A recording that contains such retries may therefore not replay: a replayed session that asks
a different number of times, or at another point, diverges.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import structlog

from tradeloom.broker.adapter import BrokerUnavailable, OpenOrdersCallback, ReportCallback
from tradeloom.broker.recording import OUTPUT_KINDS, Entry, Input, Output, read_recording
from tradeloom.broker.reports import (
    AmendRequest,
    BrokerReport,
    CancelRequest,
    OpenOrders,
    OpenOrdersQuery,
    SubmitOrder,
)
from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import PriceUpdate

log = structlog.get_logger("tradeloom.broker.replay")


class ReplayDivergence(DomainError):
    """The session asked something the recording does not contain at this point."""

    code = "replay_divergence"


@dataclass(slots=True)
class _Step:
    input: Input
    outputs: list[Output] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Delivery:
    """What the replay's thread delivers next: outputs in recorded order, and the callback of
    the query whose step this is (its answer may come in this step or a later one)."""

    outputs: list[Output]
    on_answer: OpenOrdersCallback | None = None


@dataclass(slots=True)
class _Ids:
    """Recorded id -> id used now, for orders and accounts."""

    orders: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)

    def bind(self, recorded: Entry, live: Entry) -> None:
        if isinstance(recorded, _WITHOUT_IDS) or isinstance(live, _WITHOUT_IDS):
            return
        self.orders.setdefault(recorded.order_id, live.order_id)
        self.accounts.setdefault(recorded.account_id, live.account_id)

    def translate(self, recorded: Entry) -> Entry:
        if isinstance(recorded, (PriceUpdate, OpenOrdersQuery)):
            return recorded
        if isinstance(recorded, OpenOrders):
            return OpenOrders(order_ids=tuple(self.orders.get(i, i) for i in recorded.order_ids))
        return dataclasses.replace(
            recorded,
            order_id=self.orders.get(recorded.order_id, recorded.order_id),
            account_id=self.accounts.get(recorded.account_id, recorded.account_id),
        )


_WITHOUT_IDS = (PriceUpdate, OpenOrdersQuery, OpenOrders)


def _steps(path: Path) -> tuple[list[Output], list[_Step]]:
    leading: list[Output] = []
    steps: list[_Step] = []
    for kind, entry in read_recording(path):
        if kind not in OUTPUT_KINDS:
            steps.append(_Step(entry))  # type: ignore[arg-type]
        elif steps:
            steps[-1].outputs.append(entry)  # type: ignore[arg-type]
        else:
            leading.append(entry)  # type: ignore[arg-type]
    return leading, steps


class ReplayBroker:
    def __init__(self, path: Path) -> None:
        self._leading, self._steps = _steps(path)
        self._position = 0
        self._ids = _Ids()
        self._divergence: ReplayDivergence | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Delivery | threading.Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._on_report: ReportCallback | None = None

    @property
    def finished(self) -> bool:
        """True once every recorded input has been matched."""
        return self._position == len(self._steps)

    def start(self, on_report: ReportCallback) -> None:
        self._on_report = on_report
        self._thread = threading.Thread(target=self._run, name="replay-broker", daemon=True)
        self._thread.start()
        self._queue.put(_Delivery(self._leading))

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def submit(self, request: SubmitOrder) -> None:
        self._play(request)

    def cancel(self, request: CancelRequest) -> None:
        self._play(request)

    def amend(self, request: AmendRequest) -> None:
        self._play(request)

    def query_open_orders(self, on_answer: OpenOrdersCallback) -> None:
        self._play(OpenOrdersQuery(), on_answer)

    def on_price(self, update: PriceUpdate) -> None:
        self._play(update)

    def drain(self, within: float = 5.0) -> None:
        """Block until every report due so far was delivered."""
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(within):
            raise TimeoutError(f"the replay broker did not drain within {within}s")

    def _play(self, live: Input, on_answer: OpenOrdersCallback | None = None) -> None:
        """Match ``live`` with the next recorded input (on the caller's thread, under a lock,
        so concurrent callers consume the recording one at a time) and queue its outputs."""
        if self._thread is None:
            raise BrokerUnavailable("the replay broker is not running")
        with self._lock:
            if self._divergence is not None:
                raise self._divergence
            step = self._next_step(live)
            self._ids.bind(step.input, live)
            outputs = [self._ids.translate(output) for output in step.outputs]
            self._queue.put(_Delivery(outputs, on_answer))  # type: ignore[arg-type]

    def _next_step(self, live: Input) -> _Step:
        if self._position >= len(self._steps):
            self._diverge(f"the recording has ended, but got {live!r}")
        step = self._steps[self._position]
        expected = self._expected(step.input, live)
        if expected != live:
            self._diverge(f"at input {self._position + 1}: expected {expected!r}, got {live!r}")
        self._position += 1
        return step

    def _expected(self, recorded: Input, live: Input) -> Entry:
        """The recorded input in today's ids; a submit may bind a new order id."""
        if isinstance(recorded, SubmitOrder) and isinstance(live, SubmitOrder):
            fresh = recorded.order_id not in self._ids.orders
            if fresh and live.order_id not in self._ids.orders.values():
                probe = _Ids(dict(self._ids.orders), dict(self._ids.accounts))
                probe.bind(recorded, live)
                return probe.translate(recorded)
        return self._ids.translate(recorded)

    def _diverge(self, message: str) -> NoReturn:
        self._divergence = ReplayDivergence(message)
        raise self._divergence

    def _run(self) -> None:
        """The replay's own thread: reports and answers are called back from here, as a
        broker would, in recorded order."""
        unanswered: deque[OpenOrdersCallback] = deque()
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            if item.on_answer is not None:
                unanswered.append(item.on_answer)
            for output in item.outputs:
                if isinstance(output, OpenOrders):
                    self._answer(unanswered, output)
                else:
                    self._emit(output)

    def _answer(self, unanswered: deque[OpenOrdersCallback], answer: OpenOrders) -> None:
        if not unanswered:
            log.error("replay_broker.answer_without_query", answer=repr(answer))
            return
        try:
            unanswered.popleft()(answer)
        except Exception:
            log.exception("replay_broker.answer_callback_failed")

    def _emit(self, report: BrokerReport) -> None:
        assert self._on_report is not None
        try:
            self._on_report(report)
        except Exception:
            log.exception("replay_broker.callback_failed", order_id=report.order_id)

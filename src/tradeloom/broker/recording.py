"""Recording a broker session: every input (request or price) and every report, as JSONL.

One line per entry: ``{"kind": ..., "type": ..., "body": {...}}`` where ``kind`` is
``submit``, ``cancel``, ``amend``, ``price``, ``open_orders`` (inputs), ``report`` or
``answer`` (outputs: a report, the answer to an open-orders query). Bodies are msgspec JSON:
decimals as strings (exact), timestamps RFC 3339 with their UTC zone. An input is written
BEFORE it is passed on, and an output when the broker calls back, so the file reads in causal
order: the outputs after an input were produced while or after it was handled.
``ReplayBroker`` plays such a file back.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO, Literal, TypeAlias

import msgspec

from tradeloom.broker.adapter import BrokerAdapter, OpenOrdersCallback, ReportCallback
from tradeloom.broker.reports import (
    REPORT_TYPES,
    AmendRequest,
    BrokerReport,
    CancelRequest,
    OpenOrders,
    OpenOrdersQuery,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate

Kind = Literal["submit", "cancel", "amend", "price", "open_orders", "report", "answer"]
Input: TypeAlias = SubmitOrder | CancelRequest | AmendRequest | PriceUpdate | OpenOrdersQuery
Output: TypeAlias = BrokerReport | OpenOrders
Entry: TypeAlias = Input | Output

_INPUT_KINDS: dict[type[Input], Kind] = {
    SubmitOrder: "submit",
    CancelRequest: "cancel",
    AmendRequest: "amend",
    PriceUpdate: "price",
    OpenOrdersQuery: "open_orders",
}
OUTPUT_KINDS: frozenset[Kind] = frozenset({"report", "answer"})
_TYPES: dict[str, type[Entry]] = {
    cls.__name__: cls for cls in (*_INPUT_KINDS, *REPORT_TYPES, OpenOrders)
}


class _Line(msgspec.Struct, frozen=True):
    kind: Kind
    type: str
    body: msgspec.Raw


def encode_entry(entry: Entry) -> bytes:
    """One JSONL line (with its newline) for ``entry``."""
    kind: Kind = "answer" if type(entry) is OpenOrders else "report"
    for cls, input_kind in _INPUT_KINDS.items():
        if type(entry) is cls:
            kind = input_kind
    body = msgspec.Raw(msgspec.json.encode(entry))
    return msgspec.json.encode(_Line(kind, type(entry).__name__, body)) + b"\n"


def decode_entry(line: bytes) -> tuple[Kind, Entry]:
    """The kind and value of one recorded line; raises ``msgspec.ValidationError`` if bad."""
    raw = msgspec.json.decode(line, type=_Line)
    cls = _TYPES.get(raw.type)
    if cls is None:
        raise msgspec.ValidationError(f"unknown recorded type {raw.type!r}")
    return raw.kind, msgspec.json.decode(raw.body, type=cls)


def read_recording(path: Path) -> list[tuple[Kind, Entry]]:
    with path.open("rb") as file:
        return [decode_entry(line) for line in file if line.strip()]


class RecordingAdapter:
    """Wraps any adapter and writes what passes through it to ``path``.

    Thread-safe: inputs come from the caller's thread and reports from the broker's; one lock
    keeps lines whole and in the order they happened. Each line is flushed at once, so a crash
    leaves a usable prefix.
    """

    def __init__(self, inner: BrokerAdapter, path: Path) -> None:
        self._inner = inner
        self._path = path
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None

    def start(self, on_report: ReportCallback) -> None:
        self._file = self._path.open("ab")

        def record_then_forward(report: BrokerReport) -> None:  # on the broker's thread
            self._write(report)
            on_report(report)

        self._inner.start(record_then_forward)

    def stop(self) -> None:
        self._inner.stop()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def submit(self, request: SubmitOrder) -> None:
        self._write(request)
        self._inner.submit(request)

    def cancel(self, request: CancelRequest) -> None:
        self._write(request)
        self._inner.cancel(request)

    def amend(self, request: AmendRequest) -> None:
        self._write(request)
        self._inner.amend(request)

    def query_open_orders(self, on_answer: OpenOrdersCallback) -> None:
        def record_then_answer(answer: OpenOrders) -> None:  # on the broker's thread
            self._write(answer)
            on_answer(answer)

        self._write(OpenOrdersQuery())
        self._inner.query_open_orders(record_then_answer)

    def on_price(self, update: PriceUpdate) -> None:
        self._write(update)
        self._inner.on_price(update)

    def _write(self, entry: Entry) -> None:
        line = encode_entry(entry)
        with self._lock:
            if self._file is None:
                raise RuntimeError("the recording adapter is not started")
            self._file.write(line)
            self._file.flush()

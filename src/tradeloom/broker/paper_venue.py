"""The paper venue's matching: requests and prices in, broker reports out.

Single-threaded and deterministic: each method returns the reports it produced, in the order
a venue would send them, and reads time only from the injected clock. ``PaperBroker`` runs it
on its own thread.

Rules:

* market orders take the touch (ask for a buy, bid for a sell) moved ``slippage_ticks``
  against them; with no touch they are rejected ``no_market``;
* limit orders rest until the touch is at or better than the limit, and execute at the touch;
* stop orders trigger when last, ask or bid reach the stop, then act as market (stop) or
  limit (stop-limit) orders;
* each price update shows ``displayed_quantity`` at the touch of each side; orders take from
  it in time priority, so a large order fills over several updates, one fill each;
* IOC cancels what it could not fill at once; FOK fills all at once or is canceled;
* DAY orders expire at the first ``session_close`` (UTC) after their acceptance, checked when
  prices arrive or ``check_expiry`` is called.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import TypedDict

from tradeloom.broker.paper_book import Quote, WorkingOrder, execution_price, stop_hit
from tradeloom.broker.paper_rules import check_amend, check_submit
from tradeloom.broker.reports import (
    AmendRequest,
    BrokerAccepted,
    BrokerCanceled,
    BrokerCancelRejected,
    BrokerExpired,
    BrokerFill,
    BrokerRejected,
    BrokerReplaced,
    BrokerReplaceRejected,
    BrokerReport,
    CancelRequest,
    OpenOrders,
    SubmitOrder,
)
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.ids import new_id
from tradeloom.domain.market import Instrument
from tradeloom.domain.numbers import ZERO
from tradeloom.domain.orders import Side, TimeInForce
from tradeloom.domain.time import Clock

Reports = list[BrokerReport]


class PaperVenue:
    def __init__(
        self,
        instruments: Iterable[Instrument],
        clock: Clock,
        *,
        slippage_ticks: int = 0,
        displayed_quantity: Decimal = Decimal(100),
        session_close: time = time(21, 0),
        fee_per_unit: Decimal = ZERO,
        venue_session: str | None = None,
    ) -> None:
        # Broker order ids, and the fill ids made from them, must never repeat across
        # restarts: downstream deduplicates fills by id, so a reused id would lose a fill.
        self._venue_session = venue_session or new_id().replace("-", "")[-12:]
        self._instruments = {instrument.symbol: instrument for instrument in instruments}
        self._clock = clock
        self._slippage_ticks = slippage_ticks
        self._displayed_quantity = displayed_quantity
        self._session_close = session_close
        self._fee_per_unit = fee_per_unit
        self._quotes: dict[str, Quote] = {}
        self._displayed: dict[tuple[str, Side], Decimal] = {}
        self._working: dict[str, WorkingOrder] = {}  # insertion order is time priority
        # The same orders by symbol (also in time priority), so a price update only looks at
        # its own symbol's orders, and the earliest DAY expiry, so expiry is checked only when
        # one is due: a busy feed must not cost a scan of every working order per update.
        self._working_by_symbol: dict[str, dict[str, WorkingOrder]] = {}
        self._next_expiry: datetime | None = None
        self._closed: dict[str, str] = {}  # order id -> how it ended
        self._halted: set[str] = set()
        self._accepted = 0

    def halt(self, symbol: str) -> Reports:
        self._halted.add(symbol)
        return []

    def resume(self, symbol: str) -> Reports:
        self._halted.discard(symbol)
        return []

    def submit(self, request: SubmitOrder) -> Reports:
        refusal = check_submit(
            request,
            self._instruments.get(request.symbol),
            halted=request.symbol in self._halted,
            quote=self._quotes.get(request.symbol),
            known=request.order_id in self._working or request.order_id in self._closed,
        )
        if refusal is not None:
            code, reason = refusal
            self._closed.setdefault(request.order_id, "rejected")
            return [BrokerRejected(**_ids(request), code=code, reason=reason)]
        order = self._accept(request)
        reports: Reports = [BrokerAccepted(**_ids(request), broker_order_id=order.broker_order_id)]
        if request.time_in_force is TimeInForce.FOK and not self._fillable_at_once(order):
            return [*reports, self._finish_canceled(order, "fill or kill: not fillable at once")]
        reports += self._match(order)
        if request.time_in_force in (TimeInForce.IOC, TimeInForce.FOK) and order.leaves:
            reports.append(self._finish_canceled(order, "immediate or cancel: rest canceled"))
        return reports

    def cancel(self, request: CancelRequest) -> Reports:
        order = self._own_working(request.order_id, request.account_id)
        if order is None:
            reason = self._why_not_working(request.order_id, "cancel")
            return [BrokerCancelRejected(**_ids(request), reason=reason)]
        return [self._finish_canceled(order, "canceled by request")]

    def amend(self, request: AmendRequest) -> Reports:
        order = self._own_working(request.order_id, request.account_id)
        if order is None:
            reason = self._why_not_working(request.order_id, "amend")
            return [BrokerReplaceRejected(**_ids(request), reason=reason)]
        terms = check_amend(order, request, self._instruments[order.symbol])
        if isinstance(terms, str):
            return [BrokerReplaceRejected(**_ids(request), reason=terms)]
        order.quantity, order.limit_price, order.stop_price = terms
        replaced = BrokerReplaced(
            **_ids(request),
            quantity=order.quantity,
            limit_price=order.limit_price,
            stop_price=order.stop_price,
        )
        return [replaced, *self._match(order)]

    def on_price(self, update: PriceUpdate) -> Reports:
        """Expire what is due, take the new quote, show fresh size, match in time priority."""
        if update.symbol not in self._instruments:
            return []
        reports = self.check_expiry() if self._expiry_due() else []
        self._quotes.setdefault(update.symbol, Quote()).merge(update)
        for side in Side:
            self._displayed[(update.symbol, side)] = self._displayed_quantity
        for order in list(self._working_by_symbol.get(update.symbol, {}).values()):
            reports += self._match(order)
        return reports

    def on_prices(self, updates: Sequence[PriceUpdate]) -> Reports:
        """A batch of updates, in order (one hand-over to the broker thread per batch)."""
        reports: Reports = []
        for update in updates:
            reports += self.on_price(update)
        return reports

    def open_orders(self) -> OpenOrders:
        """Every working order, in time priority. A DAY order past its close that no price or
        ``check_expiry`` has expired yet is still working here, as it would be at a venue."""
        return OpenOrders(order_ids=tuple(self._working))

    def check_expiry(self) -> Reports:
        now = self._clock.now()
        due = [o for o in self._working.values() if o.expires_at and o.expires_at <= now]
        for order in due:
            self._finish(order, "expired")
        expiries = [o.expires_at for o in self._working.values() if o.expires_at]
        self._next_expiry = min(expiries) if expiries else None
        return [BrokerExpired(**_ids(order.request)) for order in due]

    def _expiry_due(self) -> bool:
        return self._next_expiry is not None and self._next_expiry <= self._clock.now()

    # -- internals --------------------------------------------------------------------------

    def _accept(self, request: SubmitOrder) -> WorkingOrder:
        self._accepted += 1
        day = request.time_in_force is TimeInForce.DAY
        order = WorkingOrder(
            request=request,
            broker_order_id=f"PAPER-{self._venue_session}-{self._accepted:06d}",
            quantity=request.quantity,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
            expires_at=self._next_close() if day else None,
            triggered=request.stop_price is None,
        )
        self._working[request.order_id] = order
        self._working_by_symbol.setdefault(order.symbol, {})[request.order_id] = order
        if order.expires_at and (self._next_expiry is None or order.expires_at < self._next_expiry):
            self._next_expiry = order.expires_at
        return order

    def _match(self, order: WorkingOrder) -> Reports:
        """At most one fill of ``order`` against what the touch still shows."""
        quote = self._quotes.get(order.symbol)
        if quote is None or order.symbol in self._halted:
            return []
        if not order.triggered:
            order.triggered = stop_hit(order, quote)
        instrument = self._instruments[order.symbol]
        price = execution_price(order, quote, instrument.tick_size * self._slippage_ticks)
        shown = self._displayed.get((order.symbol, order.side), ZERO)
        quantity = _round_to_lot(min(order.leaves, shown), instrument.lot_size)
        if price is None or quantity <= ZERO:
            return []
        self._displayed[(order.symbol, order.side)] = shown - quantity
        order.filled += quantity
        fill = BrokerFill(
            **_ids(order.request),
            fill_id=order.next_fill_id(),
            quantity=quantity,
            price=price,
            fee=quantity * self._fee_per_unit,
            filled_at=self._clock.now(),
            cumulative_quantity=order.filled,
            leaves_quantity=order.leaves,
        )
        if not order.leaves:
            self._finish(order, "filled")
        return [fill]

    def _fillable_at_once(self, order: WorkingOrder) -> bool:
        quote = self._quotes.get(order.symbol)
        if quote is None or order.symbol in self._halted:
            return False
        slippage = self._instruments[order.symbol].tick_size * self._slippage_ticks
        shown = self._displayed.get((order.symbol, order.side), ZERO)
        return execution_price(order, quote, slippage) is not None and shown >= order.leaves

    def _finish_canceled(self, order: WorkingOrder, reason: str) -> BrokerReport:
        self._finish(order, "canceled")
        return BrokerCanceled(**_ids(order.request), reason=reason)

    def _finish(self, order: WorkingOrder, how: str) -> None:
        del self._working[order.order_id]
        del self._working_by_symbol[order.symbol][order.order_id]
        self._closed[order.order_id] = how

    def _own_working(self, order_id: str, account_id: str) -> WorkingOrder | None:
        order = self._working.get(order_id)
        if order is None or order.request.account_id != account_id:
            return None
        return order

    def _why_not_working(self, order_id: str, verb: str) -> str:
        how = self._closed.get(order_id)
        if how is None:
            return "unknown order"
        if how == "filled":
            return f"too late to {verb}: order filled"
        return f"order already {how}"

    def _next_close(self) -> datetime:
        now = self._clock.now()
        close = datetime.combine(now.date(), self._session_close, tzinfo=UTC)
        return close if close > now else close + timedelta(days=1)


class _Ids(TypedDict):
    order_id: str
    account_id: str


def _ids(request: SubmitOrder | CancelRequest | AmendRequest) -> _Ids:
    return {"order_id": request.order_id, "account_id": request.account_id}


def _round_to_lot(quantity: Decimal, lot: Decimal) -> Decimal:
    return quantity - quantity % lot

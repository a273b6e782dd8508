"""Pre-trade risk rules: a ``RiskRule`` protocol and the built-in rules, in their default order.

A rule looks at one :class:`OrderCheck` and either raises :class:`RiskRejected` at once (a
rule that needs no shared state: the kill switch, the order notional), or returns bounds that
the engine checks and reserves in ONE atomic cache script together with every other rule's
bounds (reduce-only, the order rate, open orders, buying power, concentration). Rules run in
list order and the first rejection wins: a rule that raises refuses before any bound is
checked, and bounds are checked in the order the rules returned them, the first one exceeded
naming the rejection. Rules do no I/O of their own: the engine read everything they look at
(:class:`OrderCheck`) in one round trip.

What counts toward the order rate: every order that reaches the rate window in the reserving
step and is admitted by it, including one that a later bound then refuses. An order refused
before it (halted, order notional, reduce-only), by the window itself, or checked again under
an order id that holds a reservation, is not counted. A retry of an order already placed (the
same client order id) does count: the OMS recognises it only after risk, to keep the lookup
off every new order's path, so a storm of retries spends the user's own rate.

Concentration without a division by equity: the cap on a name is ``max_concentration x
equity`` in money, turned into a quantity cap by dividing by the (positive) price. When
equity is zero or negative the cap is 0, so only orders that leave the position no larger on
the order's side pass: an account with nothing left can still close positions, never add.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Protocol

from tradeloom.domain.accounts import Account
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.numbers import ZERO
from tradeloom.domain.orders import OrderType, Side
from tradeloom.risk import errors
from tradeloom.risk.errors import RiskRejected
from tradeloom.risk.exposure import AccountExposure, AnyBound, Bound, Counter, RateBound
from tradeloom.risk.limits import RiskLimits, TradingState
from tradeloom.risk.units import QUANTITY_SCALE, clamp_units, money, money_units


@dataclass(frozen=True, slots=True)
class OrderCheck:
    """Everything a rule may look at for one order; amounts exact, units for the scripts."""

    order_id: str
    user_id: str
    account: Account
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    quantity_units: int
    notional: Decimal  # quantity x the price the order is expected to trade at
    reserve_units: int  # money a buy reserves (its notional rounded up); 0 for a sell
    quote: PriceUpdate
    mark: Decimal  # the symbol's current value per unit
    limits: RiskLimits
    state: TradingState
    exposure: AccountExposure  # read just before the rules run; bounds re-check atomically
    marks: Mapping[str, Decimal | None]  # every other symbol held: its mark (None: no price)


class RiskRule(Protocol):
    async def assess(self, check: OrderCheck) -> Sequence[AnyBound]:
        """Raise ``RiskRejected`` to refuse now; return the bounds the reservation must keep."""


def _growth_terms(side: Side) -> tuple[tuple[int, Counter], ...]:
    """Terms of the order-side exposure: for a buy, position plus open buys; for a sell,
    minus the position plus open sells (the short the sells could make)."""
    if side is Side.BUY:
        return ((1, Counter.POSITION), (1, Counter.BUYING))
    return ((-1, Counter.POSITION), (1, Counter.SELLING))


class TradingStateRule:
    """``halted`` refuses everything; ``reduce_only`` lets an order through only if, with every
    open order of its side, it cannot take the position past zero."""

    async def assess(self, check: OrderCheck) -> Sequence[AnyBound]:
        if check.state is TradingState.HALTED:
            raise RiskRejected("trading is halted", code=errors.HALTED)
        if check.state is TradingState.REDUCE_ONLY:
            message = f"reduce-only: this {check.side} would not only reduce {check.symbol}"
            return [
                Bound(
                    _growth_terms(check.side), check.quantity_units, 0, errors.REDUCE_ONLY, message
                )
            ]
        return ()


class MaxOrderNotionalRule:
    async def assess(self, check: OrderCheck) -> Sequence[AnyBound]:
        limit = check.limits.max_order_notional
        if check.notional > limit:
            raise RiskRejected(
                f"order notional {check.notional} exceeds the limit of {limit}",
                code=errors.MAX_ORDER_NOTIONAL,
            )
        return ()


class OrderRateRule:
    """A sliding window per user in the cache, shared by every process and checked in the
    reserving step (see the module docstring for what counts)."""

    async def assess(self, check: OrderCheck) -> Sequence[AnyBound]:
        limits = check.limits
        message = f"more than {limits.order_rate} orders in {limits.order_rate_window} s"
        return [
            RateBound(
                f"risk:rate:{check.user_id}",
                limits.order_rate,
                limits.order_rate_window,
                errors.ORDER_RATE,
                message,
            )
        ]


class MaxOpenOrdersRule:
    async def assess(self, check: OrderCheck) -> Sequence[AnyBound]:
        limit = check.limits.max_open_orders
        message = f"the account has {limit} open orders, the most allowed"
        return [Bound(((1, Counter.OPEN_ORDERS),), 1, limit, errors.MAX_OPEN_ORDERS, message)]


class BuyingPowerRule:
    """Reserved buys plus this one must not exceed cash: opening cash plus the net cash of
    fills. Sells need no buying power (their exposure is bounded by concentration)."""

    async def assess(self, check: OrderCheck) -> Sequence[AnyBound]:
        if check.side is not Side.BUY:
            return ()
        opening = money_units(check.account.opening_cash, round_up=False)
        terms = ((1, Counter.RESERVED), (-1, Counter.CASH_FLOW))
        message = f"buying power is short of the {check.notional} this order needs"
        return [Bound(terms, check.reserve_units, opening, errors.BUYING_POWER, message)]


class ConcentrationRule:
    """The order's side of one name (position plus open orders plus this one), valued at the
    mark, stays within ``max_concentration`` of equity (see the module docstring for zero
    equity). Equity is opening cash, plus the net cash of fills, plus every position at its
    mark; a long without a current price counts as 0 (never overstating equity), a short
    without one refuses the order (its cost is unknown)."""

    async def assess(self, check: OrderCheck) -> Sequence[AnyBound]:
        equity = self.equity(check)
        cap_money = check.limits.max_concentration * equity
        cap = ZERO if cap_money <= ZERO else cap_money / check.mark * QUANTITY_SCALE
        cap_units = clamp_units(int(cap.to_integral_value(rounding=ROUND_FLOOR)))
        message = (
            f"{check.symbol} would exceed {check.limits.max_concentration:%} of equity {equity}"
        )
        return [
            Bound(
                _growth_terms(check.side),
                check.quantity_units,
                cap_units,
                errors.CONCENTRATION,
                message,
            )
        ]

    @staticmethod
    def equity(check: OrderCheck) -> Decimal:
        snapshot = check.exposure
        equity = check.account.opening_cash + money(snapshot.cash_flow_units)
        for symbol, position in snapshot.positions.items():
            mark = check.mark if symbol == check.symbol else check.marks.get(symbol)
            if mark is None:
                if position < ZERO:
                    raise RiskRejected(
                        f"no current price for {symbol}, held short", code=errors.NO_PRICE
                    )
                continue
            equity += position * mark
        return equity


def mark_price(quote: PriceUpdate | None) -> Decimal | None:
    """The value of one unit: the last trade, else the mid, else the one side quoted; None
    when there is no positive price."""
    if quote is None:
        return None
    if quote.last is not None:
        price: Decimal | None = quote.last
    elif quote.bid is not None and quote.ask is not None:
        price = (quote.bid + quote.ask) / 2
    else:
        price = quote.bid if quote.bid is not None else quote.ask
    return price if price is not None and price > ZERO else None


def default_rules() -> list[RiskRule]:
    """The built-in rules in their order: cheap refusals first, then the reserved bounds."""
    return [
        TradingStateRule(),
        MaxOrderNotionalRule(),
        OrderRateRule(),
        MaxOpenOrdersRule(),
        BuyingPowerRule(),
        ConcentrationRule(),
    ]

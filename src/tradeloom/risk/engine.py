"""The risk engine: the one synchronous check on the order path.

``check_and_reserve`` answers in two cache round trips: one read of everything the rules look
at (the user's limits and trading states, the symbol's last price, the account's exposure and
the prices of what it holds: :mod:`tradeloom.risk.reads`), then, after the rules ran in order
without I/O, one atomic script that checks every bound (the order-rate window among them) and
reserves. A third, a read, happens only when the account holds a symbol this process has not
seen it hold yet. The account itself is memoized (owner and opening cash never change). The
order is accepted only if all of that succeeded.

**Fail closed.** Any exception from the cache, the price source or the account source becomes
``RiskRejected(code="risk.unavailable")`` (logged with its cause); a price that is unknown or
older than the last-price TTL becomes ``risk.no_price``. Nothing is reserved for a rejected
order.

**Idempotent.** Checking the same ``order_id`` again while its reservation is held returns the
reservation (``repeated=True``) without reserving twice. The caller (the OMS) must call
``release`` when it cannot persist an accepted order; fills and terminal order events release
the rest (see :mod:`tradeloom.risk.consumer`).

**Latency.** Every check is timed; the result carries it and ``on_check(seconds, outcome)``
receives it (outcome: ``"accepted"`` or the rejection code), e.g. for a histogram.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import structlog

from tradeloom.cache.port import Cache
from tradeloom.domain.accounts import Account
from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.ids import new_id
from tradeloom.domain.market import Instrument
from tradeloom.domain.numbers import ZERO, exact
from tradeloom.domain.orders import OrderType, Side
from tradeloom.domain.time import Clock
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.risk import errors
from tradeloom.risk.errors import RiskRejected
from tradeloom.risk.exposure import AnyBound, Exposure
from tradeloom.risk.limits import LimitsStore
from tradeloom.risk.reads import CheckReader
from tradeloom.risk.rules import OrderCheck, RiskRule, default_rules, mark_price
from tradeloom.risk.units import money, money_units, quantity_units

log = structlog.get_logger()

CheckObserver = Callable[[float, str], None]


class OrderTerms(Protocol):
    """The part of an order risk looks at; ``PlaceOrder`` has it."""

    @property
    def account_id(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> Side: ...
    @property
    def order_type(self) -> OrderType: ...
    @property
    def quantity(self) -> Decimal: ...
    @property
    def limit_price(self) -> Decimal | None: ...
    @property
    def stop_price(self) -> Decimal | None: ...


class AccountSource(Protocol):
    """Where accounts come from; ``AccountRepository`` is one."""

    async def get(self, account_id: str) -> Account | None: ...


@dataclass(frozen=True, slots=True)
class Reservation:
    """What an accepted order holds until it is released, filled, canceled or expires."""

    order_id: str
    account_id: str
    symbol: str
    side: Side
    quantity: Decimal
    notional: Decimal
    reserved: Decimal  # money held against buying power (0 for a sell)
    checked_at: datetime
    latency: float  # seconds the check took
    repeated: bool = False  # this order id was reserved before; nothing new was reserved


class RiskEngine:
    def __init__(
        self,
        cache: Cache,
        last_prices: LastPrices,
        limits: LimitsStore,
        exposure: Exposure,
        accounts: AccountSource,
        instruments: Mapping[str, Instrument],
        clock: Clock,
        *,
        rules: Sequence[RiskRule] | None = None,
        on_check: CheckObserver | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._reader = CheckReader(cache, limits, last_prices, exposure)
        self._exposure = exposure
        self._accounts = accounts
        self._instruments = instruments
        self._clock = clock
        self._rules = list(rules) if rules is not None else default_rules()
        self._on_check = on_check
        self._timer = timer
        self._known_accounts: dict[str, Account] = {}

    async def check_and_reserve(
        self,
        order: OrderTerms,
        user_id: str | None = None,
        *,
        account_id: str | None = None,
        order_id: str | None = None,
    ) -> Reservation:
        """Accept and reserve, or raise ``RiskRejected``.

        The account is ``account_id`` or else the order's. The reservation is kept under
        ``order_id``, else the order's own ``order_id`` (an OMS ``Order`` has one), else a new
        id: fills and ``release`` find it by that id. ``user_id`` must own the account; None
        means the account's owner (an internal caller such as a strategy of that owner), whose
        limits then apply.
        """
        started = self._timer()
        account = account_id or order.account_id
        reserved_as = order_id or getattr(order, "order_id", None) or new_id()
        try:
            reservation = await self._check(order, account, user_id, reserved_as, started)
        except RiskRejected as rejected:
            self._observe(started, rejected.code)
            raise
        self._observe(started, "accepted")
        return reservation

    async def release(self, order_id: str) -> bool:
        """Free what the order still holds; True if it held something. Idempotent.
        Raises ``RiskRejected(risk.unavailable)`` when the cache cannot be reached."""
        try:
            return await self._exposure.release(order_id)
        except Exception as exc:
            log.warning("risk.release_failed", order_id=order_id, error=repr(exc))
            raise RiskRejected("risk state is unavailable", code=errors.UNAVAILABLE) from exc

    async def _check(
        self,
        order: OrderTerms,
        account_id: str,
        user_id: str | None,
        order_id: str,
        started: float,
    ) -> Reservation:
        try:
            check = await self._order_check(order, account_id, user_id, order_id)
            bounds: list[AnyBound] = []
            for rule in self._rules:
                bounds.extend(await rule.assess(check))
            outcome = await self._exposure.reserve(
                order_id,
                account_id,
                check.symbol,
                check.side,
                check.quantity_units,
                check.reserve_units,
                bounds,
            )
        except RiskRejected:
            raise
        except DomainError as exc:
            raise RiskRejected(exc.message, code=exc.code) from exc
        except Exception as exc:
            log.warning("risk.unavailable", order_id=order_id, error=repr(exc))
            raise RiskRejected("risk state is unavailable", code=errors.UNAVAILABLE) from exc
        if outcome.status > 0:
            failed = bounds[outcome.status - 1]
            raise RiskRejected(failed.refusal(outcome.wait_us), code=failed.code)
        return Reservation(
            order_id=order_id,
            account_id=account_id,
            symbol=check.symbol,
            side=check.side,
            quantity=check.quantity,
            notional=check.notional,
            reserved=money(check.reserve_units),
            checked_at=self._clock.now(),
            latency=self._timer() - started,
            repeated=outcome.status == -1,
        )

    async def _order_check(
        self, order: OrderTerms, account_id: str, user_id: str | None, order_id: str
    ) -> OrderCheck:
        account = await self._account(account_id)
        if user_id is None:
            user_id = account.owner
        if account.owner != user_id:
            raise RiskRejected(f"account {account_id} is not yours", code=errors.NOT_OWNER)
        if order.symbol not in self._instruments:
            raise RiskRejected(f"unknown symbol {order.symbol}", code=errors.UNKNOWN_SYMBOL)
        inputs = await self._reader.read(user_id, account_id, order.symbol)
        quote = inputs.quote
        mark = mark_price(quote)
        if quote is None or mark is None:
            raise RiskRejected(f"no current price for {order.symbol}", code=errors.NO_PRICE)
        quantity = exact(order.quantity, field="quantity")
        notional = quantity * _trade_price(order, quote)
        buying = order.side is Side.BUY
        return OrderCheck(
            order_id=order_id,
            user_id=user_id,
            account=account,
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            quantity=quantity,
            quantity_units=quantity_units(quantity),
            notional=notional,
            reserve_units=money_units(notional, round_up=True) if buying else 0,
            quote=quote,
            mark=mark,
            limits=inputs.settings.limits,
            state=inputs.settings.state,
            exposure=inputs.exposure,
            marks=inputs.marks,
        )

    async def _account(self, account_id: str) -> Account:
        known = self._known_accounts.get(account_id)
        if known is not None:
            return known
        account = await self._accounts.get(account_id)
        if account is None:
            raise RiskRejected(f"unknown account {account_id}", code=errors.UNKNOWN_ACCOUNT)
        self._known_accounts[account_id] = account
        return account

    def _observe(self, started: float, outcome: str) -> None:
        if self._on_check is not None:
            self._on_check(self._timer() - started, outcome)


def _trade_price(order: OrderTerms, quote: PriceUpdate) -> Decimal:
    """The price the order is expected to trade at, for its notional.

    Limit and stop-limit: the limit. Market: a buy at the ask (else the last), a sell at the
    bid (else the last). Stop: the stop, and a buy stop no lower than the market price, since
    it becomes a market order once triggered.
    """
    if order.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and order.limit_price:
        return exact(order.limit_price, field="limit price")
    buying = order.side is Side.BUY
    market = (quote.ask if buying else quote.bid) or quote.last
    if order.order_type is OrderType.STOP and order.stop_price:
        stop = exact(order.stop_price, field="stop price")
        return max(stop, market) if buying and market is not None else stop
    if market is None or market <= ZERO:
        raise RiskRejected(
            f"no current {'ask' if buying else 'bid'} for {order.symbol}", code=errors.NO_PRICE
        )
    return market

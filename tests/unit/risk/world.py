"""A risk engine on in-memory adapters, with the means to set prices, accounts and time.

Shared by the unit tests and the Redis integration test: ``RiskWorld`` takes any ``Cache``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from tradeloom.cache.port import Cache
from tradeloom.domain.accounts import Account
from tradeloom.domain.commands import PlaceOrder
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.ids import new_id
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.risk.engine import Reservation, RiskEngine
from tradeloom.risk.exposure import Exposure
from tradeloom.risk.limits import LimitsStore, RiskLimits

START = datetime(2025, 3, 14, 14, 30, tzinfo=UTC)
SYMBOLS = ("AAPL", "MSFT", "TSLA")
D = Decimal


class ManualMonotonic:
    """Monotonic seconds for the memory cache that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AccountBook:
    """An ``AccountSource`` over a dict; ``fail`` makes every read raise."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.fail = False

    def add(self, account_id: str, owner: str, opening_cash: str) -> Account:
        cash = D(opening_cash)
        account = Account(account_id, owner, "USD", cash, cash, START)
        self.accounts[account_id] = account
        return account

    async def get(self, account_id: str) -> Account | None:
        if self.fail:
            raise ConnectionError("database down")
        return self.accounts.get(account_id)


@dataclass
class RiskWorld:
    cache: Cache
    defaults: RiskLimits = field(default_factory=RiskLimits)
    latencies: list[tuple[float, str]] = field(default_factory=list)
    accepted: list[Reservation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock = ManualClock(START)
        self.prices = LastPrices(self.cache, self.clock)
        self.exposure = Exposure(self.cache)
        self.limits = LimitsStore(self.cache, self.defaults)
        self.accounts = AccountBook()
        instruments = {s: Instrument(s, D("0.01"), D("1"), D("100")) for s in SYMBOLS}
        self.engine = RiskEngine(
            self.cache,
            self.prices,
            self.limits,
            self.exposure,
            self.accounts,
            instruments,
            self.clock,
            on_check=lambda seconds, outcome: self.latencies.append((seconds, outcome)),
        )

    async def quote(
        self,
        symbol: str,
        last: str | None = "100",
        bid: str | None = None,
        ask: str | None = None,
    ) -> None:
        update = PriceUpdate(
            symbol=symbol,
            bid=None if bid is None else D(bid),
            ask=None if ask is None else D(ask),
            last=None if last is None else D(last),
            volume=D(0),
            exchange_time=self.clock.now(),
            venue="SIMX",
        )
        await self.prices.record([update])

    async def place(
        self,
        account_id: str,
        symbol: str,
        side: Side,
        quantity: str,
        limit: str | None = None,
        *,
        user_id: str | None = None,
        order_type: OrderType | None = None,
        stop: str | None = None,
        order_id: str | None = None,
    ) -> Reservation:
        kind = order_type or (OrderType.MARKET if limit is None else OrderType.LIMIT)
        order = PlaceOrder(
            account_id=account_id,
            client_order_id=new_id(),
            symbol=symbol,
            side=side,
            order_type=kind,
            quantity=D(quantity),
            time_in_force=TimeInForce.DAY,
            correlation_id=new_id(),
            limit_price=None if limit is None else D(limit),
            stop_price=None if stop is None else D(stop),
            user_id=user_id,
        )
        return await self.engine.check_and_reserve(order, user_id, order_id=order_id)

    async def fill(
        self, reservation: Reservation, quantity: str, price: str, fill_id: str | None = None
    ) -> bool:
        return await self.exposure.apply_fill(
            reservation.account_id,
            reservation.symbol,
            reservation.side,
            D(quantity),
            D(price),
            reservation.order_id,
            fill_id or new_id(),
        )


def outcomes(latencies: list[tuple[float, str]]) -> list[str]:
    return [outcome for _, outcome in latencies]

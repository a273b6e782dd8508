"""A risk engine on in-memory adapters, with the means to set prices, accounts and time.

Shared by the unit tests and the Redis integration test: ``RiskWorld`` takes any ``Cache``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import Cache, CacheScript, RateDecision, ScriptCall
from tradeloom.domain.accounts import Account
from tradeloom.domain.commands import PlaceOrder
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.ids import new_id
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.risk.engine import Reservation, RiskEngine
from tradeloom.risk.errors import RiskRejected
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


class CountingCache(MemoryCache):
    """A memory cache that counts the calls that are round trips on Redis, by method name."""

    def __init__(self, clock: ManualMonotonic) -> None:
        super().__init__(clock=clock)
        self.trips: Counter[str] = Counter()

    async def get(self, key: str) -> bytes | None:
        self.trips["get"] += 1
        return await super().get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.trips["get_many"] += 1
        return await super().get_many(keys)

    async def run_script(
        self, script: CacheScript, keys: Sequence[str], args: Sequence[str]
    ) -> object:
        self.trips[f"run_script {script.name}"] += 1
        return await super().run_script(script, keys, args)

    async def run_scripts(self, calls: Sequence[ScriptCall]) -> list[object]:
        self.trips["run_scripts"] += 1
        return await super().run_scripts(calls)

    async def hit_rate_limit(self, key: str, limit: int, window: float) -> RateDecision:
        self.trips["hit_rate_limit"] += 1
        return await super().hit_rate_limit(key, limit, window)

    def taken(self) -> Counter[str]:
        """The calls counted since the last ``taken``."""
        taken, self.trips = self.trips, Counter()
        return taken


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


async def rejected(code: str, attempt: Awaitable[object]) -> RiskRejected:
    """Await ``attempt``, which must be refused with ``code``; returns the refusal."""
    with pytest.raises(RiskRejected) as caught:
        await attempt
    assert caught.value.code == code, f"expected {code}, got {caught.value.code}: {caught.value}"
    return caught.value

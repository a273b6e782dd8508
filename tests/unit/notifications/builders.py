"""Events, accounts and clocks for the notification tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from tradeloom.domain.accounts import Account
from tradeloom.domain.events import (
    Event,
    OrderFilled,
    OrderSubmitted,
    PositionUpdated,
    new_event,
)
from tradeloom.domain.orders import OrderType, Side, TimeInForce

NOW = datetime(2026, 11, 25, 14, 30, tzinfo=UTC)


@dataclass
class Monotonic:
    """The memory cache's clock, moved by hand to expire keys."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Accounts:
    """An ``AccountSource`` over a dict; counts reads, can be told to fail."""

    owners: dict[str, str] = field(default_factory=dict)
    reads: int = 0
    down: bool = False

    async def get(self, account_id: str) -> Account | None:
        self.reads += 1
        if self.down:
            raise ConnectionError("accounts unreachable")
        owner = self.owners.get(account_id)
        if owner is None:
            return None
        return Account(
            account_id=account_id,
            owner=owner,
            currency="USD",
            opening_cash=Decimal(100_000),
            cash=Decimal(100_000),
            created_at=NOW,
        )


def submitted(account_id: str, order_id: str = "o1") -> Event:
    payload = OrderSubmitted(
        order_id=order_id,
        client_order_id=f"c-{order_id}",
        symbol="AAPL",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal("10"),
        time_in_force=TimeInForce.DAY,
        limit_price=Decimal("187.25"),
    )
    return new_event(payload, occurred_at=NOW, correlation_id="corr-1", account_id=account_id)


def filled(account_id: str, order_id: str = "o1") -> Event:
    payload = OrderFilled(
        order_id=order_id,
        fill_id=f"f-{order_id}",
        symbol="AAPL",
        side=Side.BUY,
        quantity=Decimal("10"),
        price=Decimal("187.20"),
        fee=Decimal("0.35"),
        filled_at=NOW,
        cumulative_quantity=Decimal("10"),
        leaves_quantity=Decimal("0"),
    )
    return new_event(payload, occurred_at=NOW, correlation_id="corr-1", account_id=account_id)


def position(account_id: str, order_id: str = "o1") -> Event:
    payload = PositionUpdated(
        symbol="AAPL",
        quantity=Decimal("10"),
        average_cost=Decimal("187.235"),
        cost_basis=Decimal("1872.35"),
        realized_pnl=Decimal("0"),
        fees=Decimal("0.35"),
        cash=Decimal("98127.65"),
        fill_id=f"f-{order_id}",
        order_id=order_id,
        filled_at=NOW,
    )
    return new_event(payload, occurred_at=NOW, correlation_id="corr-1", account_id=account_id)

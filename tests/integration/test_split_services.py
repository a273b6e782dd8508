"""The platform split across processes by service, on PostgreSQL, Redis and NATS.

Two platforms share one database, bus namespace and cache namespace, as two processes would:
an API process that runs no consuming service (it takes orders and answers queries) and a
worker that runs market data, execution and the read side. An order placed through the API
process reaches the worker's broker, is filled, and the fill shows in the read model; the API
process's components show it consumed nothing itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.helpers import eventually_equals
from tradeloom.bootstrap import Platform, build_platform
from tradeloom.config import Settings
from tradeloom.domain.commands import PlaceOrder
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import OrderStatus, OrderType, Side, TimeInForce
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.storage.migrate import upgrade_database


@dataclass
class Split:
    api: Platform
    worker: Platform
    account: str


@pytest.fixture
async def split(
    postgres_url: str, nats_url: str, redis_url: str, unique: str
) -> AsyncIterator[Split]:
    await upgrade_database(postgres_url)
    common = {
        "database_url": postgres_url,
        "bus_url": nats_url,
        "cache_url": redis_url,
        "namespace": f"sp{unique}",
        "broker_timeout": 2.0,
    }
    worker = build_platform(
        Settings(**common, services="market-data,execution,read-side")  # type: ignore[arg-type]
    )
    api = build_platform(Settings(**common, services="none"))  # type: ignore[arg-type]
    try:
        await worker.start()
        await api.start()
        made = Split(api, worker, f"acc-{unique}")
        await api.accounts.create(made.account, "alice", Decimal(1_000_000))
        yield made
    finally:
        # Closed even when starting failed: a worker left running would keep the execution
        # lock of this session's database from every later test.
        await api.close()
        await worker.close()
        await delete_bus_streams(nats_url, f"SP{unique}".upper())


async def test_an_order_placed_in_the_api_process_is_filled_by_the_worker(split: Split) -> None:
    names = {component.name for component in split.api.components}
    assert names.isdisjoint({"execution", "order state", "positions", "order projection"})
    quote = PriceUpdate(
        symbol="AAPL",
        bid=Decimal("187.20"),
        ask=Decimal("187.25"),
        last=None,
        volume=Decimal(0),
        exchange_time=datetime.now(UTC),
        venue="TEST",
    )
    # Published by the API process, consumed into the cache and the broker by the worker.
    await split.api.market_data.publisher.submit(quote)

    async def cached_ask() -> Decimal | None:
        price = await split.api.market_data.last_prices.last("AAPL")
        return None if price is None else price.ask

    await eventually_equals(cached_ask, Decimal("187.25"), what="the worker caching the quote")
    receipt = await split.api.orders.place(
        PlaceOrder(
            account_id=split.account,
            client_order_id=new_id(),
            symbol="AAPL",
            side=Side.BUY,
            order_type=OrderType.MARKET,
            quantity=Decimal(5),
            time_in_force=TimeInForce.DAY,
            correlation_id=new_id(),
        )
    )

    async def seen_by_the_api() -> tuple[OrderStatus, Decimal] | None:
        view = await split.api.order_queries.get("alice", receipt.order_id)
        return None if view is None else (view.status, view.filled_quantity)

    await eventually_equals(
        seen_by_the_api, (OrderStatus.FILLED, Decimal(5)), what="the read model's fill"
    )

"""The whole app on the embedded platform (memory bus and cache, a SQLite file, the paper
broker), for the trading routes' tests: users who log in as the dashboard does, prices fed
through the market-data publisher, and counts of what the command side stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from tests.helpers import eventually_equals
from tests.unit.web.world import PASSWORD, client_for, login
from tradeloom.bootstrap import Platform, build_platform
from tradeloom.config import Settings
from tradeloom.domain.events import PriceUpdate
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.storage.schema import order_views, orders, outbox
from tradeloom.users.model import Role
from tradeloom.users.passwords import CHEAP_PARAMETERS, Passwords
from tradeloom.web.app import build_web_services, create_app
from tradeloom.web.auth import WebServices
from tradeloom.web.ratelimit import RateLimit

GENEROUS = {
    "orders": RateLimit(10_000, 1.0),
    "reads": RateLimit(10_000, 1.0),
    "login": RateLimit(10_000, 60.0),
}


def error_code(response: httpx.Response) -> str:
    """The code of an answer in the JSON error model (failing when it is not one)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    code: str = body["error"]["code"]
    return code


@dataclass
class Trader:
    """A logged-in browser: the cookie jar holds the session, and every request that changes
    state carries the CSRF header, as the dashboard's script sends it."""

    username: str
    client: httpx.AsyncClient
    csrf: str

    async def call(
        self, method: str, path: str, body: object = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {} if method == "GET" else {"X-CSRF-Token": self.csrf}
        if body is not None:
            kwargs["json"] = body
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def place(self, **terms: object) -> httpx.Response:
        body = {"symbol": "AAPL", "side": "buy", "qty": "10", "type": "limit"}
        body |= {"limit_price": "180.00", "time_in_force": "gtc"}
        body |= terms
        return await self.call("POST", "/api/orders", {k: v for k, v in body.items() if v})

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.call("GET", f"/api/orders/{order_id}")
        return response.json() if response.status_code == 200 else {}

    async def settles(self, order_id: str, **expected: object) -> dict[str, Any]:
        """Wait until the order's read model shows ``expected`` (a subset of its fields)."""

        async def shown() -> dict[str, Any]:
            found = await self.order(order_id)
            return {key: found.get(key) for key in expected}

        await eventually_equals(shown, expected, what=f"order {order_id} shows {expected}")
        return await self.order(order_id)


@dataclass
class TradingWorld:
    platform: Platform
    services: WebServices
    app: Any
    traders: list[Trader] = field(default_factory=list)

    def anonymous(self) -> httpx.AsyncClient:
        return client_for(self.app)

    async def trader(self, username: str, role: Role = Role.TRADER) -> Trader:
        await self.services.users.register(username, PASSWORD, role=role)
        client = client_for(self.app)
        trader = Trader(username, client, await login(client, username))
        self.traders.append(trader)
        return trader

    async def quote(
        self,
        symbol: str,
        bid: str,
        ask: str,
        last: str | None = None,
        *,
        age: timedelta = timedelta(0),
    ) -> None:
        """Publish a price and wait until the market-data consumer has taken it (the paper
        broker and the candles see it) and, unless it is already stale, the last-price cache
        holds it."""
        update = PriceUpdate(
            symbol=symbol,
            bid=Decimal(bid),
            ask=Decimal(ask),
            last=Decimal(last) if last else None,
            volume=Decimal(100) if last else Decimal(0),
            exchange_time=datetime.now(UTC) - age,
            venue="TEST",
        )
        market_data = self.platform.market_data
        await market_data.publisher.submit(update)
        await market_data.consumer.wait_until_consumed(market_data.publisher.published, 10.0)
        if age < timedelta(seconds=1):

            async def cached() -> PriceUpdate | None:
                return await market_data.last_prices.last(symbol)

            await eventually_equals(cached, update, what=f"the {symbol} price is cached")

    async def count(self, table: Any) -> int:
        async with self.platform.database.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(table)) or 0)

    async def stored(self) -> tuple[int, int]:
        """(orders on the command side, order commands in the outbox): what a refused request
        must leave as it was."""
        commands = select(func.count()).where(outbox.c.topic == ORDER_COMMANDS.name)
        async with self.platform.database.connect() as conn:
            placed = await conn.scalar(select(func.count()).select_from(orders))
            written = await conn.scalar(commands)
        return int(placed or 0), int(written or 0)

    async def projected(self) -> int:
        return await self.count(order_views)


@asynccontextmanager
async def trading_world(
    tmp_path: Path, configure: Callable[[Settings], Settings] = lambda s: s
) -> AsyncIterator[TradingWorld]:
    """The app on a fresh embedded platform, started by its own lifespan and closed after."""
    settings = configure(Settings(database_url=f"sqlite:///{tmp_path}/trading.db"))
    platform = build_platform(settings)
    services = build_web_services(
        platform, passwords=Passwords(CHEAP_PARAMETERS), rate_limits=GENEROUS
    )
    app = create_app(platform, services=services)
    world = TradingWorld(platform, services, app)
    async with app.router.lifespan_context(app):
        try:
            yield world
        finally:
            for trader in world.traders:
                await trader.client.aclose()

"""``/api/stream`` over a real HTTP connection (uvicorn in this process) on the embedded
platform: the snapshot first, live quotes, the caller's own order events with ids, nothing of
another user's, and a reconnect with Last-Event-ID that resumes without a gap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.helpers import eventually, eventually_equals
from tradeloom.bootstrap import Platform, build_platform
from tradeloom.config import Settings
from tradeloom.domain.events import PriceUpdate
from tradeloom.users.model import Role
from tradeloom.users.passwords import CHEAP_PARAMETERS, Passwords
from tradeloom.web.app import build_web_services, create_app
from tradeloom.web.ratelimit import RateLimit
from tradeloom.web.sse import StreamHub

PASSWORD = "correct horse battery"
GENEROUS = {
    "orders": RateLimit(10_000, 1.0),
    "reads": RateLimit(10_000, 1.0),
    "login": RateLimit(10_000, 60.0),
}


@dataclass
class Served:
    platform: Platform
    base_url: str
    hub: StreamHub


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/stream.db",
        stream_quotes_per_second=20,
        stream_heartbeat=5,
    )
    platform = build_platform(settings)
    services = build_web_services(
        platform, passwords=Passwords(CHEAP_PARAMETERS), rate_limits=GENEROUS
    )
    app = create_app(platform, services=services)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    for username in ("alice", "bob"):
        await services.users.register(username, PASSWORD, role=Role.TRADER)
    yield Served(platform, f"http://127.0.0.1:{port}", app.state.trading.hub)
    server.should_exit = True
    await serving


async def logged_in(served: Served, username: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=served.base_url, timeout=10)
    answer = await client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return client


class EventReader:
    """Reads SSE messages off a streaming response: ``{"id", "event", "data"}`` dicts; a
    message with only an id is returned with event None."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._read(), within)

    async def until(self, event: str, within: float = 5.0) -> dict[str, Any]:
        """The next message of type ``event``, skipping others."""

        async def find() -> dict[str, Any]:
            while (message := await self._read())["event"] != event:
                pass
            return message

        return await asyncio.wait_for(find(), within)

    async def _read(self) -> dict[str, Any]:
        message: dict[str, Any] = {"id": None, "event": None, "data": None}
        async for line in self._lines:
            if line == "":
                if message["id"] is not None or message["data"] is not None:
                    return message
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            message[name] = json.loads(value) if name == "data" else value
        raise EOFError("the stream ended")


async def priced(platform: Platform, update: PriceUpdate) -> None:
    """Publish ``update`` and wait until it is the symbol's last price (risk needs one)."""
    await platform.market_data.publisher.submit(update)

    async def last_bid() -> Decimal | None:
        found = await platform.market_data.last_prices.last(update.symbol)
        return None if found is None else found.bid

    await eventually_equals(last_bid, update.bid)


def quote(symbol: str, bid: str) -> PriceUpdate:
    price = Decimal(bid)
    return PriceUpdate(
        symbol=symbol,
        bid=price,
        ask=price + Decimal("0.02"),
        last=price + Decimal("0.01"),
        volume=Decimal(100),
        exchange_time=datetime.now(UTC),
        venue="TEST",
    )


async def test_a_stream_starts_with_a_snapshot_then_carries_quotes_and_own_order_events(
    served: Served,
) -> None:
    alice, bob = await logged_in(served, "alice"), await logged_in(served, "bob")
    publisher = served.platform.market_data.publisher
    await priced(served.platform, quote("AAPL", "187.00"))
    async with (
        alice.stream("GET", "/api/stream?symbols=AAPL") as alice_stream,
        bob.stream("GET", "/api/stream?symbols=MSFT") as bob_stream,
    ):
        assert alice_stream.headers["content-type"].startswith("text/event-stream")
        events, bobs = EventReader(alice_stream), EventReader(bob_stream)
        snapshot = await events.next()
        assert snapshot["event"] == "snapshot"
        assert set(snapshot["data"]) == {"quotes", "orders", "positions", "account"}
        assert snapshot["data"]["account"]["cash"] == "100000"
        assert (await events.next()) == {"id": "0", "event": None, "data": None}
        assert (await bobs.next())["event"] == "snapshot"

        await publisher.submit(quote("AAPL", "187.50"))
        live = await events.until("quote")
        assert live["data"]["symbol"] == "AAPL"

        placed = await alice.post(
            "/api/orders",
            json={
                "symbol": "AAPL",
                "side": "buy",
                "qty": "1",
                "type": "limit",
                "limit_price": "150",
                "time_in_force": "gtc",
            },
        )
        assert placed.status_code == 202, placed.text
        submitted = await events.until("order.submitted")
        assert submitted["id"] == "1"
        assert submitted["data"]["data"]["order_id"] == placed.json()["order_id"]
        accepted = await events.until("order.accepted")
        assert int(accepted["id"]) > 1

        with pytest.raises(TimeoutError):  # bob sees none of it (heartbeats aside)
            await bobs.until("order.submitted", within=0.5)
    for client in (alice, bob):
        await client.aclose()


async def test_a_client_that_hangs_up_while_idle_leaves_nothing_behind(served: Served) -> None:
    alice = await logged_in(served, "alice")
    async with alice.stream("GET", "/api/stream?symbols=AAPL,MSFT") as stream:
        await EventReader(stream).until("snapshot")
        assert served.hub.streams == 1
    # Hung up with nothing to write: the server notices on its own (not at its next write)
    # and the response's finish unsubscribes the user's events and leaves the hub.
    await eventually(lambda: served.hub.streams == 0)
    await alice.aclose()


async def test_a_reconnect_with_last_event_id_resumes_without_a_gap(served: Served) -> None:
    alice = await logged_in(served, "alice")
    order = {
        "symbol": "MSFT",
        "side": "buy",
        "qty": "1",
        "type": "limit",
        "limit_price": "100",
        "time_in_force": "gtc",
    }
    await priced(served.platform, quote("MSFT", "101.00"))
    async with alice.stream("GET", "/api/stream") as first:
        events = EventReader(first)
        await events.until("snapshot")
        assert (await alice.post("/api/orders", json=order)).status_code == 202
        seen = await events.until("order.submitted")
    # Disconnected: meanwhile the order is accepted and a second one placed.
    assert (await alice.post("/api/orders", json=order)).status_code == 202
    async with alice.stream("GET", "/api/stream", headers={"Last-Event-ID": seen["id"]}) as second:
        resumed = EventReader(second)
        assert (await resumed.next())["event"] == "snapshot"
        ids = []
        while len(ids) < 3:
            message = await resumed.next()
            if message["id"] is not None and message["event"] is not None:
                ids.append(int(message["id"]))
        assert ids == [int(seen["id"]) + 1, int(seen["id"]) + 2, int(seen["id"]) + 3]
    await alice.aclose()


async def test_the_stream_refuses_unknown_symbols_and_anonymous_callers(served: Served) -> None:
    anonymous = httpx.AsyncClient(base_url=served.base_url)
    assert (await anonymous.get("/api/stream")).status_code == 401
    alice = await logged_in(served, "alice")
    refused = await alice.get("/api/stream?symbols=NOPE")
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "unknown_symbol"
    for client in (anonymous, alice):
        await client.aclose()

"""``tradeloom demo``: the whole platform in one process, with a market and users to try it.

Every service runs on the configured backends (by default the embedded ones: SQLite under
./var, the in-process bus and cache), the simulated exchange streams prices into the platform
over its JSON WebSocket feed, demo users exist (created on the first run, kept after), and the
dashboard is served at http://HOST:PORT/. The market starts after the platform and stops
before it, inside the app's lifespan, so Ctrl-C ends everything cleanly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from tradeloom.bootstrap import Platform, build_platform
from tradeloom.cli.common import cancel_all, settings_of
from tradeloom.market_data.loopback import SimulatedExchange
from tradeloom.market_data.simulator import SimulationSettings
from tradeloom.users.model import DuplicateUser, Role
from tradeloom.users.service import UserService

if TYPE_CHECKING:
    from fastapi import FastAPI

DEMO_PASSWORD = "demo-password"


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: Role


DEMO_USERS = (
    DemoUser("alice", Role.TRADER),
    DemoUser("bob", Role.TRADER),
    DemoUser("admin", Role.ADMIN),
)


async def ensure_demo_users(users: UserService, demo_users: Sequence[DemoUser]) -> list[str]:
    """Register each demo user that does not exist yet (with its default account); returns
    one line per user saying whether it was created or already there (its password is then
    whatever it was set to)."""
    lines = []
    for demo in demo_users:
        try:
            registration = await users.register(demo.username, DEMO_PASSWORD, role=demo.role)
        except DuplicateUser:
            lines.append(f"{demo.username:<6} {demo.role.value:<7} (already there)")
            continue
        cash = f"{registration.account.opening_cash} {registration.account.currency}"
        lines.append(f"{demo.username:<6} {demo.role.value:<7} password {DEMO_PASSWORD} ({cash})")
    return lines


@asynccontextmanager
async def running_market(platform: Platform, exchange: SimulatedExchange) -> AsyncIterator[None]:
    """The simulated exchange's feeds published into ``platform`` until the block ends (the
    platform must be started)."""
    await exchange.start()
    exchange.run()
    publisher = platform.market_data.publisher
    tasks = [asyncio.create_task(publisher.publish_feed(feed)) for feed in exchange.feeds()]
    try:
        yield
    finally:
        await cancel_all(tasks)
        await exchange.stop()


def demo_app(platform: Platform, exchange: SimulatedExchange, base_url: str) -> FastAPI:
    """The platform's app, whose lifespan also creates the demo users and runs the market."""
    from tradeloom.web.app import build_web_services, create_app

    services = build_web_services(platform)
    app = create_app(platform, services=services, settle_heap_after_start=True)
    platform_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        async with platform_lifespan(application):
            lines = await ensure_demo_users(services.users, DEMO_USERS)
            async with running_market(platform, exchange):
                typer.echo(f"Tradeloom demo: open {base_url}/ and sign in as")
                for line in lines:
                    typer.echo(f"  {line}")
                yield

    app.router.lifespan_context = lifespan
    return app


def demo(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    rate: Annotated[
        float, typer.Option(min=1, help="simulated ticks per second over all symbols")
    ] = 200,
    seed: Annotated[int, typer.Option(help="random seed of the simulated market")] = 42,
) -> None:
    """Run everything in one process: the platform, a simulated market, demo users
    (alice, bob, admin) and the dashboard."""
    from tradeloom.web.server import serve

    settings = settings_of(ctx)
    host = host or settings.http_host
    port = port or settings.http_port
    platform = build_platform(settings)
    exchange = SimulatedExchange(
        list(platform.instruments.values()),
        platform.clock,
        SimulationSettings(seed=seed, rate=rate),
        wires=("json_ws",),
        rate=rate,
    )
    application = demo_app(platform, exchange, f"http://{host}:{port}")
    serve(application, host, port)

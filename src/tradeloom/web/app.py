"""The ASGI application.

``create_app`` takes a built :class:`~tradeloom.bootstrap.Platform`; the app's lifespan starts
it (and the process's SSE hub) and closes it, so one process serves HTTP exactly while its
backends are connected. ``install_api`` mounts the JSON API (auth, admin) with its error model
on an app, and the request log context (:mod:`tradeloom.web.request_context`) around all of
it; tests use it on a bare FastAPI app with services of their own. The trading routes
(orders, market data, the stream) use the platform through :class:`TradingServices`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import tradeloom
from tradeloom.bootstrap import Platform, build_passwords, settle_heap
from tradeloom.config import Settings
from tradeloom.market_data.observers import price_channel
from tradeloom.observability.gc_pauses import GcPauses
from tradeloom.positions.queries import PositionQueries
from tradeloom.users.credentials_version import CredentialsVersion
from tradeloom.users.passwords import Passwords
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import UserService
from tradeloom.users.sessions import SessionStore
from tradeloom.users.tokens import ApiTokens
from tradeloom.web.auth import WebServices
from tradeloom.web.dashboard import install_dashboard
from tradeloom.web.errors import install_error_handlers
from tradeloom.web.health import health_router
from tradeloom.web.ratelimit import RateLimit, RateLimiter
from tradeloom.web.request_context import RequestLogContext
from tradeloom.web.routes.admin import admin_router
from tradeloom.web.routes.auth import auth_router
from tradeloom.web.routes.market import market_router, quote_from_fanout
from tradeloom.web.routes.orders import orders_router
from tradeloom.web.routes.portfolio import portfolio_router
from tradeloom.web.routes.stream import stream_router
from tradeloom.web.sse import StreamHub
from tradeloom.web.trading import TradingServices


def rate_limits_of(settings: Settings) -> dict[str, RateLimit]:
    window = settings.rate_limit_window
    return {
        "orders": RateLimit(settings.rate_limit_orders, window),
        "reads": RateLimit(settings.rate_limit_reads, window),
        "login": RateLimit(settings.rate_limit_login, settings.rate_limit_login_window),
    }


def build_web_services(
    platform: Platform,
    *,
    passwords: Passwords | None = None,
    session_ttl: float | None = None,
    session_max_lifetime: float | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
) -> WebServices:
    """The API's services on the platform's database, cache and clock; what is not given
    comes from the platform's settings."""
    settings = platform.settings
    version = CredentialsVersion(platform.cache)
    users = UserRepository(platform.database, platform.clock, version=version)
    return WebServices(
        users=UserService(users, passwords or build_passwords(settings), platform.accounts),
        sessions=SessionStore(
            platform.cache,
            platform.clock,
            ttl=session_ttl or settings.session_ttl,
            max_lifetime=session_max_lifetime or settings.session_max_lifetime,
        ),
        tokens=ApiTokens(platform.database, platform.clock, version=version),
        rate_limiter=RateLimiter(platform.cache, rate_limits or rate_limits_of(settings)),
        limits=platform.limits,
        accounts=platform.accounts,
    )


def install_api(app: FastAPI, services: WebServices) -> None:
    """Mount ``/api/auth`` and ``/api/admin``, answer every error in the JSON model, and give
    every request of ``app`` its correlation id and log context (the auth dependency's
    ``user_id`` binding relies on it to be undone)."""
    app.state.web = services
    app.add_middleware(RequestLogContext)
    install_error_handlers(app)
    app.include_router(auth_router())
    app.include_router(admin_router())


def trading_services(platform: Platform) -> TradingServices:
    """The trading routes' services on ``platform``, with a new SSE hub for this process."""
    hub = StreamHub(
        platform.cache,
        price_channel=price_channel,
        quote_from_message=quote_from_fanout,
        quotes_per_second=platform.settings.stream_quotes_per_second,
        heartbeat=platform.settings.stream_heartbeat,
    )
    return TradingServices(
        orders=platform.orders,
        order_queries=platform.order_queries,
        accounts=platform.accounts,
        instruments=platform.instruments,
        last_prices=platform.market_data.last_prices,
        candles=platform.market_data.candles,
        hub=hub,
        user_streams=platform.user_streams,
    )


def install_trading(app: FastAPI, services: TradingServices, positions: PositionQueries) -> None:
    """Mount ``/api/orders``, ``/api/market``, ``/api/positions``, ``/api/account`` and
    ``/api/stream``."""
    app.state.trading = services
    app.state.positions = positions
    app.include_router(orders_router())
    app.include_router(market_router())
    app.include_router(portfolio_router())
    app.include_router(stream_router())


def create_app(
    platform: Platform,
    *,
    services: WebServices | None = None,
    settle_heap_after_start: bool = False,
) -> FastAPI:
    """The app of one process. ``settle_heap_after_start`` freezes the heap once everything
    has started (see :func:`~tradeloom.bootstrap.settle_heap`): for ``tradeloom serve``, not
    for tests that build many apps in one process."""
    trading = trading_services(platform)
    gc_pauses = GcPauses(platform.metrics.registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        await trading.hub.start()
        if settle_heap_after_start:
            settle_heap()
        gc_pauses.install()
        try:
            yield
        finally:
            gc_pauses.uninstall()
            await trading.hub.stop()
            await platform.close()

    app = FastAPI(
        title="Tradeloom",
        version=tradeloom.__version__,
        description="Multi-user algorithmic trading: orders, risk, positions and live streams.",
        lifespan=lifespan,
    )
    app.state.platform = platform
    app.include_router(health_router(platform.readiness_checks()))
    install_api(app, services or build_web_services(platform))
    install_trading(app, trading, platform.position_queries)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest(platform.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    install_dashboard(app)
    return app

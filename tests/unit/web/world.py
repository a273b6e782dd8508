"""The API on in-memory parts: a migrated SQLite file, the memory cache (or any cache), cheap
password hashing, and clocks a test moves by hand.

Shared by the unit tests and the Redis integration test (``make_services`` takes any cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI

from tradeloom.accounts.repository import AccountRepository
from tradeloom.cache.port import Cache
from tradeloom.domain.time import Clock, ManualClock
from tradeloom.risk.limits import LimitsStore
from tradeloom.storage.database import Database
from tradeloom.users.credentials_version import CredentialsVersion
from tradeloom.users.model import Role
from tradeloom.users.passwords import CHEAP_PARAMETERS, Passwords
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import Registration, UserService
from tradeloom.users.sessions import SessionStore
from tradeloom.users.tokens import ApiTokens
from tradeloom.web.app import install_api
from tradeloom.web.auth import AuthenticatedUser, WebServices, rate_limit
from tradeloom.web.ratelimit import RateLimit, RateLimiter

START = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
PASSWORD = "correct horse battery"
GENEROUS = {"reads": RateLimit(10_000, 1.0), "login": RateLimit(10_000, 60.0)}


class Clocks:
    """The wall clock (sessions) and the memory cache's monotonic seconds, moved together."""

    def __init__(self) -> None:
        self.wall = ManualClock(START)
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.wall.advance(timedelta(seconds=seconds))
        self.seconds += seconds


class FailingCache:
    """Wraps a cache; while ``down`` is set every call raises, as an unreachable Redis does."""

    def __init__(self, inner: Cache) -> None:
        self._inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise ConnectionError("cache unreachable")
            return await method(*args, **kwargs)

        return call


def make_services(
    database: Database,
    cache: Cache,
    clock: Clock,
    *,
    rate_limits: Mapping[str, RateLimit] | None = None,
    session_ttl: float = 3600.0,
    session_max_lifetime: float = 24 * 3600.0,
) -> WebServices:
    accounts = AccountRepository(database, clock)
    version = CredentialsVersion(cache)
    return WebServices(
        users=UserService(
            UserRepository(database, clock, version=version), Passwords(CHEAP_PARAMETERS), accounts
        ),
        sessions=SessionStore(cache, clock, ttl=session_ttl, max_lifetime=session_max_lifetime),
        tokens=ApiTokens(database, clock, version=version),
        rate_limiter=RateLimiter(cache, {**GENEROUS, **(rate_limits or {})}),
        limits=LimitsStore(cache),
        accounts=accounts,
    )


def make_app(services: WebServices) -> FastAPI:
    """The API, plus two probe routes shaped like the order and read routes to come."""
    app = FastAPI()
    install_api(app, services)

    @app.post("/api/probe/orders")
    async def probe_order(
        user: Annotated[AuthenticatedUser, Depends(rate_limit("orders"))],
    ) -> dict[str, str]:
        return {"username": user.username, "via": user.via}

    @app.get("/api/probe/reads")
    async def probe_read(
        user: Annotated[AuthenticatedUser, Depends(rate_limit("reads"))],
    ) -> dict[str, str]:
        return {"username": user.username, "via": user.via}

    return app


def client_for(app: FastAPI, base_url: str = "http://test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


async def register(
    services: WebServices, username: str, role: Role = Role.TRADER, password: str = PASSWORD
) -> Registration:
    return await services.users.register(username, password, role=role)


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> str:
    """Log ``client`` in (its cookie jar keeps the session); returns the CSRF token."""
    response = await client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    csrf: str = response.json()["csrf_token"]
    return csrf

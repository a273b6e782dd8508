"""Sessions and rate limits on real Redis, shared by two web processes (two apps, each with
its own Redis connections, on one database), as behind a load balancer.

Each test uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.helpers import eventually_equals
from tests.unit.web.world import PASSWORD, START, client_for, login, make_app, make_services
from tradeloom.cache.redis import RedisCache
from tradeloom.domain.time import ManualClock, SystemClock
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade
from tradeloom.users.model import Role, User
from tradeloom.users.sessions import SessionStore
from tradeloom.web.auth import WebServices
from tradeloom.web.ratelimit import RateLimit

pytestmark = pytest.mark.redis

LIMITS = {"orders": RateLimit(3, 10.0)}


@pytest.fixture
def prefix(unique: str) -> str:
    return f"test:{unique}:"


@pytest.fixture
async def redis_admin(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    admin = Redis.from_url(redis_url)
    yield admin
    leftovers = [key async for key in admin.scan_iter(match=f"{prefix}*")]
    if leftovers:
        await admin.delete(*leftovers)
    await admin.aclose()


@pytest.fixture
async def caches(
    redis_url: str, prefix: str, redis_admin: Redis
) -> AsyncIterator[list[RedisCache]]:
    opened = [RedisCache(redis_url, prefix=prefix) for _ in range(2)]
    for cache in opened:
        await cache.start()
    yield opened
    for cache in opened:
        await cache.close()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/web.db")
    await upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
async def processes(
    database: Database, caches: list[RedisCache]
) -> AsyncIterator[tuple[WebServices, httpx.AsyncClient, httpx.AsyncClient]]:
    """Two web processes' clients that share one browser's cookie jar."""
    services = [
        make_services(database, cache, SystemClock(), rate_limits=LIMITS) for cache in caches
    ]
    await services[0].users.register("alice", PASSWORD)
    await services[0].users.register("root", PASSWORD, role=Role.ADMIN)
    async with client_for(make_app(services[0])) as one, client_for(make_app(services[1])) as two:
        yield services[0], one, two


async def test_a_session_opened_by_one_process_is_honoured_and_ended_by_another(
    processes: tuple[WebServices, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, one, two = processes
    csrf = await login(one, "alice")
    two.cookies.set("tl_session", one.cookies["tl_session"])
    me = await two.get("/api/auth/me")
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice"

    assert (await two.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})).status_code == 204
    assert (await one.get("/api/auth/me")).status_code == 401


async def test_disabling_a_user_in_one_process_ends_their_session_in_the_other(
    processes: tuple[WebServices, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, admin, trader = processes
    csrf = await login(admin, "root")
    await login(trader, "alice")
    response = await admin.put(
        "/api/admin/users/alice/disabled", json={"disabled": True}, headers={"X-CSRF-Token": csrf}
    )
    assert response.status_code == 200, response.text
    assert (await trader.get("/api/auth/me")).status_code == 401


async def test_a_rate_limit_counts_a_users_requests_in_every_process(
    processes: tuple[WebServices, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    services, one, two = processes
    issued = await services.tokens.issue("alice", "bot")
    bearer = {"Authorization": f"Bearer {issued.token}"}
    admitted = [
        (await client.post("/api/probe/orders", headers=bearer)).status_code
        for client in (one, two, one)
    ]
    refused = await two.post("/api/probe/orders", headers=bearer)
    assert admitted == [200, 200, 200]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert refused.json()["error"]["code"] == "rate_limited"


async def test_an_idle_session_expires_in_redis(caches: list[RedisCache]) -> None:
    store = SessionStore(caches[0], ttl=0.3, max_lifetime=60, refresh_every=60)
    session = await store.create(User("alice", Role.TRADER, START))
    assert await store.get(session.session_id) == session

    async def read() -> object:
        return await store.get(session.session_id)

    await eventually_equals(read, None, within=5, what="the session expired")


async def test_a_session_in_use_is_refreshed_to_the_full_ttl(
    caches: list[RedisCache], redis_admin: Redis, prefix: str
) -> None:
    clock = ManualClock(START)
    store = SessionStore(caches[0], clock, ttl=60, max_lifetime=3600)
    session = await store.create(User("alice", Role.TRADER, START))
    key = prefix + "auth:session:" + hashlib.sha256(session.session_id.encode()).hexdigest()
    await redis_admin.pexpire(key, 5_000)  # as if 55 s had passed idle
    clock.advance(timedelta(seconds=55))
    assert await store.get(session.session_id) == session
    assert await redis_admin.pttl(key) > 50_000


async def test_an_unreachable_redis_logs_everyone_out(database: Database) -> None:
    down = RedisCache("redis://127.0.0.1:1/0", socket_timeout=1.0)
    services = make_services(database, down, SystemClock())
    async with client_for(make_app(services)) as client:
        client.cookies.set("tl_session", "alice.some-secret")
        response = await client.get("/api/auth/me")
    await down.close()
    assert response.status_code == 401
    assert response.json()["error"]["details"] == {"reason": "session_store_unavailable"}

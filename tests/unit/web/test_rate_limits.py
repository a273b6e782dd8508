"""Per-user rate limits on order entry and reads: 429 with Retry-After past the limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.unit.web.world import Clocks, FailingCache, client_for, make_app, make_services
from tradeloom.cache.port import RateDecision
from tradeloom.storage.database import Database
from tradeloom.web.auth import WebServices, rate_limit
from tradeloom.web.ratelimit import RateLimit, retry_after_seconds


@pytest.fixture
def services(database: Database, cache: FailingCache, clocks: Clocks) -> WebServices:
    limits = {"orders": RateLimit(3, 1.0), "reads": RateLimit(5, 2.0)}
    return make_services(database, cache, clocks.wall, rate_limits=limits)  # type: ignore[arg-type]


@pytest.fixture
async def tokens(services: WebServices) -> dict[str, dict[str, str]]:
    headers = {}
    for name in ("alice", "bob"):
        await services.users.register(name, "correct horse battery")
        issued = await services.tokens.issue(name, "bot")
        headers[name] = {"Authorization": f"Bearer {issued.token}"}
    return headers


@pytest.fixture
async def bot(services: WebServices) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(services)) as client:
        yield client


async def test_past_the_order_limit_the_answer_is_429_with_retry_after(
    bot: httpx.AsyncClient, tokens: dict[str, dict[str, str]], clocks: Clocks
) -> None:
    statuses = [
        (await bot.post("/api/probe/orders", headers=tokens["alice"])).status_code for _ in range(3)
    ]
    refused = await bot.post("/api/probe/orders", headers=tokens["alice"])
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == {
        "code": "rate_limited",
        "message": "too many orders requests; retry in 1 s",
        "details": {"kind": "orders", "limit": 3, "retry_after": 1},
    }
    clocks.advance(1.0)
    assert (await bot.post("/api/probe/orders", headers=tokens["alice"])).status_code == 200


async def test_limits_are_per_user_and_per_kind(
    bot: httpx.AsyncClient, tokens: dict[str, dict[str, str]]
) -> None:
    for _ in range(3):
        await bot.post("/api/probe/orders", headers=tokens["alice"])
    assert (await bot.post("/api/probe/orders", headers=tokens["alice"])).status_code == 429
    assert (await bot.post("/api/probe/orders", headers=tokens["bob"])).status_code == 200
    assert (await bot.get("/api/probe/reads", headers=tokens["alice"])).status_code == 200


async def test_retry_after_rounds_up_to_whole_seconds(
    bot: httpx.AsyncClient, tokens: dict[str, dict[str, str]], clocks: Clocks
) -> None:
    for _ in range(5):
        assert (await bot.get("/api/probe/reads", headers=tokens["alice"])).status_code == 200
    clocks.advance(0.5)
    refused = await bot.get("/api/probe/reads", headers=tokens["alice"])
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"  # 1.5 s left in the 2 s window


async def test_an_unauthenticated_request_is_401_before_any_rate_limit(
    bot: httpx.AsyncClient,
) -> None:
    assert (await bot.get("/api/probe/reads")).status_code == 401


async def test_when_the_cache_cannot_count_the_request_is_refused_with_503(
    bot: httpx.AsyncClient, tokens: dict[str, dict[str, str]], cache: FailingCache
) -> None:
    cache.down = True
    response = await bot.post("/api/probe/orders", headers=tokens["alice"])
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["retry-after"] == "1"


def test_retry_after_is_at_least_one_second() -> None:
    assert retry_after_seconds(RateDecision(False, 3, 0.001)) == 1
    assert retry_after_seconds(RateDecision(False, 3, 2.0)) == 2
    assert retry_after_seconds(RateDecision(False, 3, 2.01)) == 3


def test_an_unknown_rate_limit_kind_fails_when_the_route_is_defined() -> None:
    with pytest.raises(ValueError, match="no rate limit named 'writes'"):
        rate_limit("writes")

"""``/api/admin``: users, limits, trading states and the kill switch, for administrators only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI

from tests.unit.web.world import PASSWORD, Clocks, client_for, login, register
from tradeloom.risk.limits import PLATFORM, TradingState
from tradeloom.users.model import Role
from tradeloom.web.auth import WebServices

ADMIN_ROUTES = [
    ("POST", "/api/admin/users", {"username": "carol", "password": PASSWORD}),
    ("GET", "/api/admin/users", None),
    ("GET", "/api/admin/users/alice/limits", None),
    ("PUT", "/api/admin/users/alice/limits", {"order_rate": 5}),
    ("PUT", "/api/admin/users/alice/trading-state", {"state": "halted"}),
    ("PUT", "/api/admin/platform/trading-state", {"state": "halted"}),
    ("PUT", "/api/admin/users/alice/disabled", {"disabled": True}),
]


class Session:
    """A logged-in browser: requests carry the cookie and, when they change state, the CSRF
    header, as the dashboard's script would send them."""

    def __init__(self, client: httpx.AsyncClient, csrf: str) -> None:
        self.client = client
        self.csrf = csrf

    async def call(self, method: str, path: str, body: object = None) -> httpx.Response:
        headers = {} if method == "GET" else {"X-CSRF-Token": self.csrf}
        return await self.client.request(method, path, json=body, headers=headers)


@pytest.fixture
async def admin(app: FastAPI, services: WebServices, clocks: Clocks) -> AsyncIterator[Session]:
    await register(services, "root", Role.ADMIN)
    clocks.advance(1)
    await register(services, "alice")
    async with client_for(app) as client:
        yield Session(client, await login(client, "root"))


@pytest.fixture
async def trader(app: FastAPI, admin: Session) -> AsyncIterator[Session]:
    async with client_for(app) as client:
        yield Session(client, await login(client, "alice"))


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_every_admin_route_refuses_a_trader(
    trader: Session, services: WebServices, method: str, path: str, body: object
) -> None:
    response = await trader.call(method, path, body)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert await services.limits.trading_state(PLATFORM) is TradingState.ACTIVE


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_every_admin_route_refuses_an_anonymous_caller(
    client: httpx.AsyncClient, method: str, path: str, body: object
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == 401


async def test_an_admin_creates_a_user_with_a_default_account(
    admin: Session, services: WebServices
) -> None:
    response = await admin.call(
        "POST",
        "/api/admin/users",
        {"username": "Carol", "password": PASSWORD, "opening_cash": "2500.50"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["username"] == "carol"
    assert created["role"] == "trader"
    assert created["disabled"] is False
    [account] = created["accounts"]
    assert account["opening_cash"] == "2500.50"
    stored = await services.accounts.get(account["account_id"])
    assert stored is not None
    assert stored.owner == "carol"
    assert stored.cash == Decimal("2500.50")
    assert (await services.users.authenticate("carol", PASSWORD)).username == "carol"


async def test_creating_a_taken_username_is_409_and_a_bad_one_422(admin: Session) -> None:
    taken = await admin.call(
        "POST", "/api/admin/users", {"username": "alice", "password": PASSWORD}
    )
    bad = await admin.call("POST", "/api/admin/users", {"username": "a b", "password": PASSWORD})
    weak = await admin.call("POST", "/api/admin/users", {"username": "dave", "password": "short"})
    inexact = await admin.call(
        "POST",
        "/api/admin/users",
        {"username": "erin", "password": PASSWORD, "opening_cash": 0.1},
    )
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "user.duplicate")
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "user.invalid_username")
    assert (weak.status_code, weak.json()["error"]["code"]) == (422, "user.invalid_password")
    assert inexact.status_code == 422
    assert inexact.json()["error"]["details"][0]["field"] == "opening_cash"


async def test_an_admin_lists_users_with_their_accounts(admin: Session) -> None:
    response = await admin.call("GET", "/api/admin/users")
    assert response.status_code == 200
    users = response.json()["users"]
    assert [(u["username"], u["role"]) for u in users] == [("root", "admin"), ("alice", "trader")]
    assert users[0]["created_at"] == "2025-03-14T09:30:00+00:00"
    assert all(len(u["accounts"]) == 1 for u in users)


async def test_an_admin_sets_limits_the_risk_engine_reads(
    admin: Session, services: WebServices
) -> None:
    response = await admin.call(
        "PUT",
        "/api/admin/users/alice/limits",
        {"max_order_notional": "25000", "order_rate": 5, "max_concentration": "0.5"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["limits"]["max_order_notional"] == "25000"
    limits = await services.limits.limits_for("alice")
    assert (limits.max_order_notional, limits.order_rate) == (Decimal(25000), 5)

    reset = await admin.call("PUT", "/api/admin/users/alice/limits", {"reset": True})
    assert reset.json()["limits"]["order_rate"] == str(services.limits.defaults.order_rate)
    read = await admin.call("GET", "/api/admin/users/alice/limits")
    assert read.json() == reset.json()


async def test_invalid_limits_are_422_and_unknown_users_404(admin: Session) -> None:
    too_much = await admin.call(
        "PUT", "/api/admin/users/alice/limits", {"max_concentration": "1.5"}
    )
    unknown_field = await admin.call("PUT", "/api/admin/users/alice/limits", {"max_orders": 1})
    wrong_type = await admin.call("PUT", "/api/admin/users/alice/limits", {"order_rate": "5"})
    nobody = await admin.call("PUT", "/api/admin/users/nobody/limits", {"order_rate": 5})
    assert (too_much.status_code, too_much.json()["error"]["code"]) == (
        422,
        "risk.invalid_limits",
    )
    assert unknown_field.status_code == wrong_type.status_code == 422
    assert (nobody.status_code, nobody.json()["error"]["code"]) == (404, "user.not_found")


async def test_trading_states_of_a_user_and_of_the_platform(
    admin: Session, services: WebServices
) -> None:
    user = await admin.call("PUT", "/api/admin/users/alice/trading-state", {"state": "reduce_only"})
    assert user.json() == {"username": "alice", "state": "reduce_only", "effective": "reduce_only"}

    platform = await admin.call("PUT", "/api/admin/platform/trading-state", {"state": "halted"})
    assert platform.json() == {"state": "halted"}
    assert (await services.limits.settings_for("alice")).state is TradingState.HALTED

    again = await admin.call("PUT", "/api/admin/users/alice/trading-state", {"state": "active"})
    assert again.json() == {"username": "alice", "state": "active", "effective": "halted"}
    bad = await admin.call("PUT", "/api/admin/platform/trading-state", {"state": "paused"})
    assert bad.status_code == 422


async def test_disabling_a_user_ends_their_sessions_and_tokens_at_once(
    admin: Session, trader: Session, services: WebServices
) -> None:
    issued = await services.tokens.issue("alice", "bot")
    response = await admin.call("PUT", "/api/admin/users/alice/disabled", {"disabled": True})
    assert response.status_code == 200
    assert response.json()["disabled"] is True
    assert (await trader.call("GET", "/api/auth/me")).status_code == 401
    bearer = {"Authorization": f"Bearer {issued.token}"}
    assert (await trader.client.get("/api/auth/me", headers=bearer)).status_code == 401

    await admin.call("PUT", "/api/admin/users/alice/disabled", {"disabled": False})
    assert (await trader.client.get("/api/auth/me", headers=bearer)).status_code == 200
    await login(trader.client, "alice")
    assert (await trader.client.get("/api/auth/me")).status_code == 200


async def test_an_admin_cannot_disable_themselves(admin: Session) -> None:
    response = await admin.call("PUT", "/api/admin/users/root/disabled", {"disabled": True})
    assert response.status_code == 409


async def test_an_admin_token_may_administer_without_csrf(
    admin: Session, services: WebServices
) -> None:
    issued = await services.tokens.issue("root", "ops script")
    response = await admin.client.put(
        "/api/admin/platform/trading-state",
        json={"state": "reduce_only"},
        headers={"Authorization": f"Bearer {issued.token}"},
    )
    assert response.status_code == 200
    assert await services.limits.trading_state(PLATFORM) is TradingState.REDUCE_ONLY

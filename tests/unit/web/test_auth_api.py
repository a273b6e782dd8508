"""Logging in and out, sessions, CSRF and API tokens, through the HTTP API."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.unit.web.world import PASSWORD, Clocks, FailingCache, client_for, login, register
from tradeloom.storage.database import Database
from tradeloom.storage.schema import api_tokens
from tradeloom.web.auth import WebServices


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie header by cookie name, lower-cased."""
    headers = response.headers.get_list("set-cookie")
    return {header.split("=", 1)[0]: header.lower() for header in headers}


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


# -- login ------------------------------------------------------------------------------------


async def test_login_answers_the_user_and_sets_a_strict_http_only_session_cookie(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    response = await client.post(
        "/api/auth/login", json={"username": " Alice ", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == "alice"
    assert body["role"] == "trader"
    assert len(body["csrf_token"]) >= 32
    cookies = set_cookies(response)
    session = cookies["tl_session"]
    assert "httponly" in session
    assert "samesite=strict" in session
    assert "path=/" in session
    assert "secure" not in session  # plain http here
    assert "httponly" not in cookies["tl_csrf"]  # the page's script reads it
    assert body["csrf_token"].lower() in cookies["tl_csrf"]
    assert response.headers["cache-control"] == "no-store"


async def test_the_session_cookie_is_secure_when_the_request_came_over_https(
    app: FastAPI, services: WebServices
) -> None:
    await register(services, "alice")
    async with client_for(app, "https://test") as client:
        response = await client.post(
            "/api/auth/login", json={"username": "alice", "password": PASSWORD}
        )
        me = await client.get("/api/auth/me")
    assert "secure" in set_cookies(response)["tl_session"]
    assert me.status_code == 200


async def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    wrong = await client.post("/api/auth/login", json={"username": "alice", "password": "nope"})
    unknown = await client.post("/api/auth/login", json={"username": "bob", "password": "nope"})
    malformed = await client.post("/api/auth/login", json={"username": "b!", "password": "nope"})
    assert wrong.status_code == unknown.status_code == malformed.status_code == 401
    assert wrong.json() == unknown.json() == malformed.json()
    assert error_code(wrong) == "auth.invalid_credentials"
    assert "set-cookie" not in wrong.headers


async def test_a_disabled_user_cannot_log_in(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    await services.users.set_disabled("alice", True)
    wrong = await client.post("/api/auth/login", json={"username": "alice", "password": "nope"})
    right = await client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    assert wrong.status_code == 401
    assert right.status_code == 403
    assert error_code(right) == "auth.user_disabled"


async def test_login_attempts_are_rate_limited_per_address_and_username(
    database: Database, cache: FailingCache, clocks: Clocks
) -> None:
    from tests.unit.web.world import make_app, make_services
    from tradeloom.web.ratelimit import RateLimit

    services = make_services(
        database,
        cache,  # type: ignore[arg-type]
        clocks.wall,
        rate_limits={"login": RateLimit(3, 60.0)},
    )
    await register(services, "alice")
    async with client_for(make_app(services)) as client:
        attempts = [
            await client.post("/api/auth/login", json={"username": "alice", "password": "x"})
            for _ in range(4)
        ]
        other_user = await client.post("/api/auth/login", json={"username": "bob", "password": "x"})
        clocks.advance(60)
        later = await client.post(
            "/api/auth/login", json={"username": "alice", "password": PASSWORD}
        )
    assert [a.status_code for a in attempts] == [401, 401, 401, 429]
    assert attempts[-1].headers["retry-after"] == "60"
    assert other_user.status_code == 401
    assert later.status_code == 200


# -- me and logout ----------------------------------------------------------------------------


async def test_me_answers_the_logged_in_user_with_their_accounts(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    registration = await register(services, "alice")
    csrf = await login(client, "alice")
    me = await client.get("/api/auth/me")
    assert me.status_code == 200
    assert me.json() == {
        "username": "alice",
        "role": "trader",
        "via": "cookie",
        "csrf_token": csrf,
        "accounts": [{"account_id": registration.account.account_id, "currency": "USD"}],
    }


async def test_without_credentials_the_answer_is_401_not_authenticated(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/auth/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_an_unknown_session_cookie_is_401(client: httpx.AsyncClient) -> None:
    client.cookies.set("tl_session", "alice.forged")
    response = await client.get("/api/auth/me")
    assert response.status_code == 401
    assert response.json()["error"]["details"] == {"reason": "session_expired"}


async def test_logout_ends_the_session_and_clears_the_cookies(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    csrf = await login(client, "alice")
    session_id = client.cookies["tl_session"]
    refused = await client.post("/api/auth/logout")
    assert refused.status_code == 403, "logout by cookie needs the CSRF header too"

    response = await client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 204
    assert "tl_session" not in client.cookies
    assert await services.sessions.get(session_id) is None
    client.cookies.set("tl_session", session_id)
    assert (await client.get("/api/auth/me")).status_code == 401


async def test_logout_without_a_session_is_204(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/auth/logout")).status_code == 204


async def test_a_new_login_ends_the_session_the_browser_held(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    await login(client, "alice")
    first = client.cookies["tl_session"]
    await login(client, "alice")
    assert client.cookies["tl_session"] != first
    assert await services.sessions.get(first) is None


# -- CSRF -------------------------------------------------------------------------------------


async def test_a_cookie_request_that_changes_state_needs_the_csrf_header(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    csrf = await login(client, "alice")
    missing = await client.post("/api/probe/orders")
    wrong = await client.post("/api/probe/orders", headers={"X-CSRF-Token": "x" + csrf})
    right = await client.post("/api/probe/orders", headers={"X-CSRF-Token": csrf})
    read = await client.get("/api/probe/reads")
    assert missing.status_code == wrong.status_code == 403
    assert error_code(missing) == error_code(wrong) == "csrf_failed"
    assert right.status_code == 200
    assert read.status_code == 200, "a GET needs no CSRF token"


async def test_a_bearer_request_needs_no_csrf_header(
    client: httpx.AsyncClient, services: WebServices, app: FastAPI
) -> None:
    await register(services, "alice")
    issued = await services.tokens.issue("alice", "bot")
    async with client_for(app) as bot:
        response = await bot.post(
            "/api/probe/orders", headers={"Authorization": f"Bearer {issued.token}"}
        )
    assert response.status_code == 200
    assert response.json() == {"username": "alice", "via": "token"}


# -- API tokens -------------------------------------------------------------------------------


async def test_a_token_is_shown_once_used_as_bearer_listed_without_secret_and_revoked(
    client: httpx.AsyncClient, services: WebServices, app: FastAPI
) -> None:
    await register(services, "alice")
    csrf = await login(client, "alice")
    created = await client.post(
        "/api/auth/tokens", json={"name": "my bot"}, headers={"X-CSRF-Token": csrf}
    )
    assert created.status_code == 201, created.text
    token, token_id = created.json()["token"], created.json()["token_id"]
    assert created.json()["name"] == "my bot"
    assert created.headers["cache-control"] == "no-store"

    async with client_for(app) as bot:
        bearer = {"Authorization": f"Bearer {token}"}
        me = await bot.get("/api/auth/me", headers=bearer)
        assert me.status_code == 200
        assert me.json()["via"] == "token"
        assert "csrf_token" not in me.json()

        listed = await client.get("/api/auth/tokens")
        assert [t["token_id"] for t in listed.json()["tokens"]] == [token_id]
        assert token not in listed.text

        revoked = await client.delete(
            f"/api/auth/tokens/{token_id}", headers={"X-CSRF-Token": csrf}
        )
        assert revoked.status_code == 204
        after = await bot.get("/api/auth/me", headers=bearer)
    assert after.status_code == 401
    assert after.json()["error"]["details"] == {"reason": "invalid_token"}


async def test_tokens_are_stored_only_as_their_sha256(
    services: WebServices, database: Database
) -> None:
    await register(services, "alice")
    issued = await services.tokens.issue("alice", "bot")
    async with database.connect() as conn:
        rows = [dict(row._mapping) for row in await conn.execute(select(api_tokens))]
    assert len(rows) == 1
    assert rows[0]["token_hash"] == hashlib.sha256(issued.token.encode()).hexdigest()
    assert all(issued.token not in str(value) for value in rows[0].values())


async def test_a_token_cannot_create_more_tokens(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    issued = await services.tokens.issue("alice", "bot")
    response = await client.post(
        "/api/auth/tokens",
        json={"name": "another"},
        headers={"Authorization": f"Bearer {issued.token}"},
    )
    assert response.status_code == 403
    assert error_code(response) == "forbidden"


async def test_a_user_cannot_revoke_another_users_token(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    await register(services, "bob")
    bobs = await services.tokens.issue("bob", "bot")
    csrf = await login(client, "alice")
    response = await client.delete(
        f"/api/auth/tokens/{bobs.info.token_id}", headers={"X-CSRF-Token": csrf}
    )
    assert response.status_code == 404
    assert error_code(response) == "token.not_found"
    assert await services.tokens.authenticate(bobs.token) is not None


@pytest.mark.parametrize(
    "authorization", ["Basic YWxpY2U6eA==", "Bearer", "Bearer tl_unknown", "tl_token"]
)
async def test_a_malformed_or_unknown_bearer_token_is_401(
    client: httpx.AsyncClient, authorization: str
) -> None:
    response = await client.get("/api/auth/me", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"


# -- fail closed ------------------------------------------------------------------------------


async def test_when_the_session_store_is_down_the_caller_is_logged_out(
    client: httpx.AsyncClient, services: WebServices, cache: FailingCache
) -> None:
    await register(services, "alice")
    await login(client, "alice")
    cache.down = True
    response = await client.get("/api/auth/me")
    assert response.status_code == 401
    assert response.json()["error"]["details"] == {"reason": "session_store_unavailable"}
    cache.down = False
    assert (await client.get("/api/auth/me")).status_code == 200


async def test_a_login_while_the_session_store_is_down_is_503(
    client: httpx.AsyncClient, services: WebServices, cache: FailingCache
) -> None:
    await register(services, "alice")
    cache.down = True
    response = await client.post("/api/auth/login", json={"username": "alice", "password": "x"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "set-cookie" not in response.headers


async def test_a_disabled_users_token_stops_working(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    issued = await services.tokens.issue("alice", "bot")
    await services.users.set_disabled("alice", True)
    response = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {issued.token}"})
    assert response.status_code == 401

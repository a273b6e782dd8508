"""Every error is ``{"error": {"code", "message", "details"}}`` with the right status; bad input
is never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.unit.web.world import PASSWORD, register
from tradeloom.domain.accounts import DuplicateAccount
from tradeloom.domain.errors import DomainError, InvalidOrder
from tradeloom.oms.commands import OrderNotFound
from tradeloom.risk import errors as risk_errors
from tradeloom.risk.errors import RiskRejected
from tradeloom.web.auth import WebServices
from tradeloom.web.errors import install_error_handlers, status_for, validation_details


def assert_error_shape(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    error: dict[str, object] = body["error"]
    return error


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/auth/login",
        content=b'{"username": "alice",',
        headers={"Content-Type": "application/json"},
    )
    assert_error_shape(response, 400, "malformed_json")


async def test_a_body_that_is_not_json_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/auth/login", content=b"username=alice", headers={"Content-Type": "text/plain"}
    )
    assert_error_shape(response, 415, "unsupported_media_type")


async def test_unknown_fields_are_422_naming_each_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/auth/login",
        json={"username": "alice", "password": "x", "remember_me": True, "otp": "1"},
    )
    error = assert_error_shape(response, 422, "validation_failed")
    details = error["details"]
    assert isinstance(details, list)
    assert {(d["field"], d["type"]) for d in details} == {
        ("remember_me", "extra_forbidden"),
        ("otp", "extra_forbidden"),
    }
    assert all(d["location"] == "body" for d in details)


async def test_wrong_types_and_missing_fields_are_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/login", json={"username": 42})
    error = assert_error_shape(response, 422, "validation_failed")
    assert isinstance(error["details"], list)
    assert {d["field"] for d in error["details"]} == {"username", "password"}


async def test_a_missing_body_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/login")
    error = assert_error_shape(response, 422, "validation_failed")
    assert error["details"] == [
        {"field": "body", "location": "body", "message": "Field required", "type": "missing"}
    ]


async def test_a_json_array_instead_of_an_object_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/login", json=["alice", "x"])
    assert_error_shape(response, 422, "validation_failed")


async def test_unknown_routes_are_404_and_wrong_methods_405(client: httpx.AsyncClient) -> None:
    assert_error_shape(await client.get("/api/nothing-here"), 404, "not_found")
    wrong = await client.get("/api/auth/login")
    assert_error_shape(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


async def test_a_domain_error_answers_with_its_code(
    client: httpx.AsyncClient, services: WebServices
) -> None:
    await register(services, "alice")
    await services.users.set_disabled("alice", True)
    response = await client.post(
        "/api/auth/login", json={"username": "alice", "password": PASSWORD}
    )
    assert_error_shape(response, 403, "auth.user_disabled")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OrderNotFound("no order o-1"), 404),
        (DuplicateAccount("exists"), 409),
        (InvalidOrder("bad", code="invalid_quantity"), 422),
        (RiskRejected("too big", code=risk_errors.MAX_ORDER_NOTIONAL), 422),
        (RiskRejected("unknown state", code=risk_errors.UNAVAILABLE), 503),
        (DomainError("something else"), 400),
    ],
)
def test_domain_errors_map_to_a_status_in_one_table(error: DomainError, status: int) -> None:
    assert status_for(error) == status


def test_validation_details_name_nested_field_paths() -> None:
    errors = [{"loc": ("body", "legs", 0, "price"), "msg": "bad", "type": "decimal_type"}]
    assert validation_details(errors) == [
        {"field": "legs.0.price", "location": "body", "message": "bad", "type": "decimal_type"}
    ]


@pytest.fixture
async def failing_client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/refused")
    async def refused() -> None:
        raise RiskRejected("trading is halted", code=risk_errors.HALTED)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_an_unexpected_error_is_a_500_that_leaks_nothing(
    failing_client: httpx.AsyncClient,
) -> None:
    response = await failing_client.get("/boom")
    assert_error_shape(response, 500, "internal_error")
    assert "secret" not in response.text


async def test_a_risk_rejection_shows_its_own_code_and_message(
    failing_client: httpx.AsyncClient,
) -> None:
    response = await failing_client.get("/refused")
    error = assert_error_shape(response, 422, "risk.halted")
    assert error["message"] == "trading is halted"

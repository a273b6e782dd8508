"""Every log line a request causes carries its correlation id, and its user once known; none
of it outlives the request.

The test client runs each request on the test's own task, so a binding that leaked would show
in the next request and in ``get_contextvars()`` here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import structlog
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from tests.unit.observability.json_logs import JsonLines, captured_json_logs
from tests.unit.web.world import FailingCache, client_for, login, make_app, register
from tradeloom.web.auth import CurrentUser, WebServices
from tradeloom.web.request_context import CorrelationId

log = structlog.get_logger("tests.web")


@pytest.fixture
def logs() -> Iterator[JsonLines]:
    with captured_json_logs("web") as lines:
        yield lines


@pytest.fixture
def app(services: WebServices) -> FastAPI:
    """The API plus routes that log: as the caller, anonymously, while streaming, and a bug."""
    app = make_app(services)

    @app.get("/api/probe/logged")
    async def logged(user: CurrentUser, correlation_id: CorrelationId) -> dict[str, str]:
        log.info("probe.logged")
        return {"correlation_id": correlation_id}

    @app.get("/api/probe/anonymous")
    async def anonymous() -> dict[str, str]:
        log.info("probe.anonymous")
        return {}

    @app.get("/api/probe/stream")
    async def stream(user: CurrentUser) -> StreamingResponse:
        async def frames() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            log.info("probe.streaming")
            yield b"data: two\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    @app.get("/api/probe/broken")
    async def broken(user: CurrentUser) -> None:
        raise RuntimeError("a bug")

    return app


def assert_nothing_bound() -> None:
    assert structlog.contextvars.get_contextvars() == {}, "a request left its log context bound"


async def test_a_line_carries_the_requests_correlation_id_and_user(
    client: httpx.AsyncClient, services: WebServices, logs: JsonLines
) -> None:
    await register(services, "alice")
    await login(client, "alice")

    response = await client.get("/api/probe/logged")

    assert response.status_code == 200, response.text
    line = logs.one("probe.logged")
    assert line["user_id"] == "alice"
    assert line["correlation_id"] == response.headers["X-Correlation-ID"]
    assert line["correlation_id"] == response.json()["correlation_id"], "one id per request"
    assert "account_id" not in line
    assert_nothing_bound()


async def test_nothing_leaks_into_the_next_request(
    client: httpx.AsyncClient, app: FastAPI, services: WebServices, logs: JsonLines
) -> None:
    await register(services, "alice")
    await login(client, "alice")
    first = await client.get("/api/probe/logged")
    async with client_for(app) as anonymous:
        second = await anonymous.get("/api/probe/anonymous")

    assert second.status_code == 200, second.text
    line = logs.one("probe.anonymous")
    assert "user_id" not in line, f"alice's id leaked into an anonymous request: {line}"
    assert line["correlation_id"] == second.headers["X-Correlation-ID"]
    assert line["correlation_id"] != first.headers["X-Correlation-ID"]
    assert_nothing_bound()


async def test_a_production_line_carries_the_user_once_known(
    services: WebServices, cache: FailingCache, app: FastAPI, logs: JsonLines
) -> None:
    """The rate limiter's cache is down after a token authenticated the caller: the line that
    says so names the caller and the request."""
    await register(services, "bob")
    token = (await services.tokens.issue("bob", "bot")).token
    cache.down = True
    async with client_for(app) as bot:
        response = await bot.get("/api/probe/reads", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 503, response.text
    line = logs.one("web.rate_limit_unavailable")
    assert (line["user_id"], line["service"]) == ("bob", "web")
    assert line["correlation_id"] == response.headers["X-Correlation-ID"]
    assert_nothing_bound()


async def test_a_streamed_response_arrives_whole_and_logs_in_context(
    client: httpx.AsyncClient, services: WebServices, logs: JsonLines
) -> None:
    await register(services, "alice")
    await login(client, "alice")

    response = await client.get("/api/probe/stream")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b"data: one\n\ndata: two\n\n"
    line = logs.one("probe.streaming")
    assert line["user_id"] == "alice"
    assert line["correlation_id"] == response.headers["X-Correlation-ID"]
    assert_nothing_bound()


async def test_an_unexpected_error_is_logged_with_the_requests_context(
    app: FastAPI, services: WebServices, logs: JsonLines
) -> None:
    """The 500 handler runs outside the middleware: it binds the request's context again."""
    await register(services, "alice")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await login(client, "alice")
        response = await client.get("/api/probe/broken")

    assert response.status_code == 500
    line = logs.one("web.unhandled_error")
    assert line["user_id"] == "alice"
    assert line["correlation_id"] == response.headers["X-Correlation-ID"]  # quotable by the client
    assert "a bug" in line["exception"]
    assert_nothing_bound()


async def test_a_route_that_sets_the_header_keeps_its_own(
    services: WebServices, logs: JsonLines
) -> None:
    app = make_app(services)

    @app.get("/api/probe/own-header")
    async def own(user: CurrentUser) -> StreamingResponse:
        return StreamingResponse(iter([b"{}"]), headers={"X-Correlation-ID": "the-original"})

    await register(services, "alice")
    async with client_for(app) as client:
        await login(client, "alice")
        response = await client.get("/api/probe/own-header")

    assert response.headers.get_list("X-Correlation-ID") == ["the-original"]

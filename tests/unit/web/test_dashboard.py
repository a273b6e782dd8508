"""The dashboard's page and files as the app serves them, and the demo's users."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tradeloom.cli.demo import DEMO_PASSWORD, DEMO_USERS, ensure_demo_users
from tradeloom.users.model import Role
from tradeloom.web.auth import WebServices
from tradeloom.web.dashboard import STATIC_DIR, install_dashboard

OWN_FILES = sorted(
    path
    for path in STATIC_DIR.rglob("*")
    if path.suffix in {".html", ".js", ".css"} and "vendor" not in path.parts
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()

    @app.get("/api/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    install_dashboard(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_the_page_is_served_at_the_root_with_a_same_origin_policy(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert 'id="login-form"' in page.text


async def test_the_scripts_and_styles_are_served_under_static(http: httpx.AsyncClient) -> None:
    script = await http.get("/static/js/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert (await http.get("/static/app.css")).status_code == 200


async def test_the_dashboard_shadows_no_api_path(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/ping")).json() == {"pong": "yes"}
    assert (await http.get("/api/unknown")).status_code == 404
    assert (await http.get("/static/nothing.js")).status_code == 404


def test_the_dashboard_loads_nothing_from_another_origin() -> None:
    """The machine running it may be offline: every URL in our files is same-origin."""
    assert OWN_FILES, f"no dashboard files under {STATIC_DIR}"
    for path in OWN_FILES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), (
            f"{path.name} names another origin"
        )
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for url in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert url.startswith(("/static/", "data:")), f"index.html loads {url}"


async def test_demo_users_are_created_once_and_can_sign_in(services: WebServices) -> None:
    first = await ensure_demo_users(services.users, DEMO_USERS)
    again = await ensure_demo_users(services.users, DEMO_USERS)

    assert [line.split()[0] for line in first] == ["alice", "bob", "admin"]
    assert all(DEMO_PASSWORD in line for line in first)
    assert all("already there" in line for line in again)
    roles = {user.username: user.role for user in await services.users.list_users()}
    assert roles == {"alice": Role.TRADER, "bob": Role.TRADER, "admin": Role.ADMIN}
    user = await services.users.authenticate("alice", DEMO_PASSWORD)
    assert user.username == "alice"
    assert len(await services.accounts.list_for_owner("bob")) == 1

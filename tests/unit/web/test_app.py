"""The whole app on the embedded platform: the API is mounted and works end to end."""

from __future__ import annotations

from pathlib import Path

from tests.unit.web.world import PASSWORD, client_for
from tradeloom.bootstrap import build_platform
from tradeloom.config import Settings
from tradeloom.users.model import Role
from tradeloom.users.passwords import CHEAP_PARAMETERS, Passwords
from tradeloom.web.app import build_web_services, create_app


async def test_an_admin_logs_in_and_creates_a_trader_on_the_embedded_platform(
    tmp_path: Path,
) -> None:
    platform = build_platform(Settings(database_url=f"sqlite:///{tmp_path}/app.db"))
    services = build_web_services(platform, passwords=Passwords(CHEAP_PARAMETERS))
    app = create_app(platform, services=services)
    async with app.router.lifespan_context(app), client_for(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        await services.users.register("root", PASSWORD, role=Role.ADMIN)

        login = await client.post(
            "/api/auth/login", json={"username": "root", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        created = await client.post(
            "/api/admin/users",
            json={"username": "alice", "password": PASSWORD},
            headers={"X-CSRF-Token": login.json()["csrf_token"]},
        )
        assert created.status_code == 201, created.text
        [account] = created.json()["accounts"]
        assert account["opening_cash"] == "100000"
        assert (await client.get("/api/auth/me")).json()["role"] == "admin"
        missing = await client.get("/api/nothing")
        assert missing.json()["error"]["code"] == "not_found"

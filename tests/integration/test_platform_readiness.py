"""The whole platform on PostgreSQL, Redis and NATS (and on the embedded default): it starts,
is ready, and says which backend went away when one does."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.tcp_proxy import TcpProxy
from tradeloom.bootstrap import Platform, StartupError, build_platform
from tradeloom.config import Settings
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.storage.migrate import upgrade_database
from tradeloom.web.app import create_app


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.cut()


@pytest.fixture
async def platform(
    postgres_url: str, nats_url: str, redis_proxy: TcpProxy, unique: str
) -> AsyncIterator[Platform]:
    await upgrade_database(postgres_url)
    namespace = f"t{unique}"
    settings = Settings(
        database_url=postgres_url,
        bus_url=nats_url,
        cache_url=f"redis://127.0.0.1:{redis_proxy.port}/0",
        namespace=namespace,
    )
    built = build_platform(settings)
    await built.start()
    yield built
    await built.close()
    await delete_bus_streams(nats_url, namespace.upper())


def client(platform: Platform) -> httpx.AsyncClient:
    app = create_app(platform)  # the fixture started the platform; no lifespan here
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_ready_on_real_servers_then_names_the_cache_when_redis_goes_away(
    platform: Platform, redis_proxy: TcpProxy
) -> None:
    async with client(platform) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        await redis_proxy.cut()
        down = await http.get("/readyz")
        live = await http.get("/healthz")
    assert down.status_code == 503
    assert list(down.json()["down"]) == ["cache"]
    assert live.status_code == 200


async def test_a_postgres_database_behind_the_latest_migration_refuses_to_start(
    postgres_url: str, unique: str
) -> None:
    admin_url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    name = f"tl_empty_{unique}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(database_url=postgres_url.rsplit("/", 1)[0] + f"/{name}")
        with pytest.raises(StartupError, match="tradeloom db upgrade"):
            await build_platform(settings).start()
    finally:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.close()


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Platform]:
    """The embedded default (SQLite, in-memory bus and cache), its archive not yet created."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'var' / 'tradeloom.db'}",
        bus_url="memory://",
        cache_url="memory://",
        archive_url=str(tmp_path / "var" / "archive"),
    )
    built = build_platform(settings)
    await built.start()
    yield built
    await built.close()


async def test_the_embedded_platform_is_ready_then_names_the_archive_when_a_file_takes_its_place(
    embedded: Platform,
) -> None:
    async with client(embedded) as http:
        ready = await http.get("/readyz")
        embedded.settings.archive_path.write_text("a file where the archive folder belongs")
        down = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["backends"] == ["archive", "bus", "cache", "database"]
    assert down.status_code == 503
    assert list(down.json()["down"]) == ["archive"]
    assert "is not a folder" in down.json()["down"]["archive"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
async def test_the_embedded_platform_names_the_archive_when_its_folder_is_read_only(
    embedded: Platform,
) -> None:
    archive = embedded.settings.archive_path
    archive.mkdir()
    archive.chmod(0o500)
    try:
        async with client(embedded) as http:
            down = await http.get("/readyz")
    finally:
        archive.chmod(0o700)
    assert down.status_code == 503
    assert "is not writable" in down.json()["down"]["archive"]

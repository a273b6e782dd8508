"""Databases no other test writes to, for tests that read or change every row of a table
(reconciliation reads every open claim; a migration test starts from an empty schema)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers import POSTGRES_ADMIN_URL, require_server, run_admin_sql
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a database of this test's own, never migrated (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/own.db"
        return
    async with _own_postgres() as url:
        yield url


@pytest.fixture
async def own_database(empty_database_url: str) -> AsyncIterator[Database]:
    """A migrated database of this test's own."""
    async with _migrated(empty_database_url) as database:
        yield database


@pytest.fixture
async def own_postgres_database() -> AsyncIterator[Database]:
    """A migrated PostgreSQL database of this test's own: where several processes could run
    execution on one database (their advisory locks are per database)."""
    async with _own_postgres() as url, _migrated(url) as database:
        yield database


@contextlib.asynccontextmanager
async def _own_postgres() -> AsyncIterator[str]:
    require_server("PostgreSQL", POSTGRES_ADMIN_URL)
    name = f"tradeloom_own_{uuid.uuid4().hex[:12]}"
    await run_admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        await run_admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def _migrated(url: str) -> AsyncIterator[Database]:
    await upgrade_database(url)
    database = Database(url)
    try:
        yield database
    finally:
        await database.dispose()

"""The migrated database of the tests that must hold on both dialects: a SQLite file per test
and the session's shared PostgreSQL database (every test names its own accounts and orders:
never assume empty tables). Packages with a database of their own (users, web) override
them in their conftest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tradeloom.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await upgrade_database(database_url)
    db = Database(database_url)
    yield db
    await db.dispose()

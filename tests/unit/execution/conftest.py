"""Execution's tests run on SQLite and on PostgreSQL (whose batch statements differ); one
database per session on PostgreSQL, so every test names its orders and accounts uniquely."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/execution.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await upgrade_database(database_url)
    db = Database(database_url, pool_size=4)
    yield db
    await db.dispose()

"""Users' stores on SQLite (a temporary file) and on the shared PostgreSQL database (unique
usernames per test, so tests never see each other's rows)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.web.world import START
from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.time import ManualClock
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade
from tradeloom.users.passwords import CHEAP_PARAMETERS, Passwords
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import UserService
from tradeloom.users.tokens import ApiTokens


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/users.db"
    else:
        url = request.getfixturevalue("postgres_url")
    db = Database(url)
    await upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def repository(database: Database, clock: ManualClock) -> UserRepository:
    return UserRepository(database, clock)


@pytest.fixture
def accounts(database: Database, clock: ManualClock) -> AccountRepository:
    return AccountRepository(database, clock)


@pytest.fixture
def users(repository: UserRepository, accounts: AccountRepository) -> UserService:
    return UserService(repository, Passwords(CHEAP_PARAMETERS), accounts)


@pytest.fixture
def tokens(database: Database, clock: ManualClock) -> ApiTokens:
    return ApiTokens(database, clock, max_per_user=3)


@pytest.fixture
def name(unique: str) -> str:
    """A username no other test uses."""
    return f"u-{unique}"

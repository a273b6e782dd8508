"""Accounts on SQLite (a temporary file) and PostgreSQL, each on a freshly migrated schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from tradeloom.accounts import AccountRepository, create_account
from tradeloom.domain.accounts import DuplicateAccount, InvalidAccount
from tradeloom.domain.time import ManualClock
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade
from tradeloom.storage.schema import metadata

START = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/accounts.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    url = database_url
    db = Database(url)
    async with db.transaction() as conn:  # start from an empty schema on the shared database
        for table in (*[t.name for t in reversed(metadata.sorted_tables)], "alembic_version"):
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    await upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


async def test_create_then_get_round_trips_exactly(database: Database, clock: ManualClock) -> None:
    accounts = AccountRepository(database, clock)
    created = await accounts.create("ACC-1", "alice", Decimal("100000.123456789"), "EUR")
    assert created.cash == created.opening_cash == Decimal("100000.123456789")
    assert await accounts.get("ACC-1") == created
    assert created.created_at == START
    assert await accounts.get("missing") is None


async def test_a_duplicate_id_is_refused_and_changes_nothing(
    database: Database, clock: ManualClock
) -> None:
    accounts = AccountRepository(database, clock)
    first = await create_account(database, "ACC-1", "alice", "500", clock=clock)
    with pytest.raises(DuplicateAccount) as caught:
        await accounts.create("ACC-1", "mallory", "1000000")
    assert caught.value.code == "account.duplicate"
    assert await accounts.get("ACC-1") == first


async def test_racing_creates_of_one_id_make_one_account(database: Database) -> None:
    accounts = AccountRepository(database)
    results = await asyncio.gather(
        *(accounts.create("ACC-R", f"user{i}", "10") for i in range(5)), return_exceptions=True
    )
    duplicates = [r for r in results if isinstance(r, DuplicateAccount)]
    others = [r for r in results if isinstance(r, BaseException) and r not in duplicates]
    assert not others, f"unexpected failures: {others!r}"
    assert len(duplicates) == 4


async def test_list_for_owner_returns_only_theirs_oldest_first(
    database: Database, clock: ManualClock
) -> None:
    accounts = AccountRepository(database, clock)
    await accounts.create("B", "alice", "1")
    clock.advance(timedelta(seconds=1))
    await accounts.create("A", "alice", "2")
    await accounts.create("C", "bob", "3")
    assert [a.account_id for a in await accounts.list_for_owner("alice")] == ["B", "A"]
    assert await accounts.list_for_owner("nobody") == []


@pytest.mark.parametrize(
    ("account_id", "owner", "cash", "currency"),
    [
        ("", "alice", "1", "USD"),
        ("has space", "alice", "1", "USD"),
        ("pipe|id", "alice", "1", "USD"),
        ("OK", "", "1", "USD"),
        ("OK", "alice", "-1", "USD"),
        ("OK", "alice", "1", "usd"),
    ],
)
async def test_malformed_terms_are_refused_before_writing(
    database: Database, account_id: str, owner: str, cash: str, currency: str
) -> None:
    accounts = AccountRepository(database)
    with pytest.raises(InvalidAccount):
        await accounts.create(account_id, owner, cash, currency)
    assert await accounts.list_for_owner(owner) == []

"""A migrated database (SQLite file, and the shared PostgreSQL one), an owner with an account,
and an order projection on it. On PostgreSQL ids are unique per test: never assume empty
tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from tests.unit.oms.order_events import START
from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBus
from tradeloom.observability.metrics import Metrics
from tradeloom.oms.projection import OrderProjection
from tradeloom.oms.queries import OrderQueries
from tradeloom.storage.database import Database


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START + timedelta(hours=1))


@dataclass
class ReadModel:
    """The projection, the queries and a user with one account, all on one database."""

    database: Database
    projection: OrderProjection
    queries: OrderQueries
    accounts: AccountRepository
    metrics: Metrics
    clock: ManualClock
    owner: str
    account: str


@pytest.fixture
async def model(database: Database, clock: ManualClock, unique: str) -> ReadModel:
    metrics = Metrics()
    accounts = AccountRepository(database, clock)
    owner, account = f"alice-{unique}", f"acc-a-{unique}"
    await accounts.create(account, owner, 100_000)
    projection = OrderProjection(MemoryBus(), database, clock, metrics=metrics)
    return ReadModel(
        database, projection, OrderQueries(database), accounts, metrics, clock, owner, account
    )

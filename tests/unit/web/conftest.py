"""An API on a fresh SQLite file and the memory cache, with hand-moved clocks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.unit.web.world import Clocks, FailingCache, client_for, make_app, make_services
from tradeloom.cache.memory import MemoryCache
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade
from tradeloom.web.auth import WebServices


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def cache(clocks: Clocks) -> FailingCache:
    return FailingCache(MemoryCache(clock=clocks))


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/web.db")
    await upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
def services(database: Database, cache: FailingCache, clocks: Clocks) -> WebServices:
    return make_services(database, cache, clocks.wall)  # type: ignore[arg-type]


@pytest.fixture
def app(services: WebServices) -> FastAPI:
    return make_app(services)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http

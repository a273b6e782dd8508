"""Fixtures shared by every test layer: real-server URLs and throwaway databases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.servers import NATS_URL, POSTGRES_ADMIN_URL, REDIS_URL, require_server, run_admin_sql


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    require_server("PostgreSQL", POSTGRES_ADMIN_URL)

    name = f"tradeloom_test_{uuid.uuid4().hex[:12]}"

    # In a thread of its own: the fixture may be first asked for from inside a running loop.
    with ThreadPoolExecutor(max_workers=1) as admin_thread:
        admin_thread.submit(asyncio.run, run_admin_sql(f'CREATE DATABASE "{name}"')).result()
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        yield f"{base}/{name}"
        admin_thread.submit(
            asyncio.run, run_admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        ).result()


@pytest.fixture
def redis_url() -> str:
    require_server("Redis", REDIS_URL)
    return REDIS_URL


@pytest.fixture
def nats_url() -> str:
    require_server("NATS", NATS_URL)
    return NATS_URL


@pytest.fixture
def unique() -> str:
    """A short unique token for naming streams, keys and groups so tests never collide."""
    return uuid.uuid4().hex[:10]

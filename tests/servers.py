"""Where the real servers are, and how a test that needs one behaves when it is down.

Locally a missing server skips its tests; with ``CI=true`` it fails them, because CI must
never report green without having talked to PostgreSQL, Redis and NATS.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import asyncpg
import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "TRADELOOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TRADELOOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("TRADELOOM_TEST_NATS_URL", "nats://127.0.0.1:4222")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_server(name: str, url: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless a TCP connection to ``url`` succeeds."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if port is None:
        raise ValueError(f"{url} names no port")
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


async def run_admin_sql(sql: str, url: str = POSTGRES_ADMIN_URL) -> None:
    """Run one statement on PostgreSQL's administrative database (``CREATE``/``DROP
    DATABASE``, which no transaction may hold), on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()

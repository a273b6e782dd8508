"""`tradeloom db upgrade` and `db current` against a real PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from tests.servers import run_admin_sql
from tradeloom.cli import app
from tradeloom.storage.migrate import head_revision


@pytest.fixture
def empty_database(postgres_url: str, unique: str) -> Iterator[str]:
    base = postgres_url.rsplit("/", 1)[0]
    name = f"tl_cli_{unique}"

    admin = f"{base}/postgres"
    asyncio.run(run_admin_sql(f'CREATE DATABASE "{name}"', admin))
    yield f"{base}/{name}"
    asyncio.run(run_admin_sql(f'DROP DATABASE "{name}" WITH (FORCE)', admin))


def test_upgrade_brings_an_empty_database_to_the_latest_revision_twice_over(
    empty_database: str,
) -> None:
    runner = CliRunner()
    url = ["--database-url", empty_database]
    before = runner.invoke(app, [*url, "db", "current"])
    assert f"database at revision none (latest: {head_revision()})" in before.output
    for _ in range(2):
        upgraded = runner.invoke(app, [*url, "db", "upgrade"])
        assert upgraded.exit_code == 0, upgraded.output
        assert f"database at revision {head_revision()}" in upgraded.output

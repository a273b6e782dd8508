"""Bring a database's schema up to date; what ``tradeloom db upgrade`` runs.

Alembic is configured here in code, with the migration scripts shipped inside the package, so
no ``alembic.ini`` is needed at run time. Guarantees:

* **Idempotent.** Upgrading a database that is already at the target revision does nothing.
* **All or nothing.** Every pending revision runs in one transaction (SQLite and PostgreSQL
  both have transactional DDL), so a failed upgrade leaves the previous schema in place.
* **Safe to race.** On PostgreSQL the upgrade holds a transaction-level advisory lock, so
  several processes starting at once upgrade one after another, and the later ones find
  nothing left to do. On SQLite the write transaction serialises them the same way.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from tradeloom.storage.database import Database

MIGRATIONS_PATH = Path(__file__).with_name("migrations")

# Arbitrary constant naming the migration lock among PostgreSQL's advisory locks.
_MIGRATION_LOCK_ID = 0x7472_6C6D_0001  # "trlm" 1


def alembic_config() -> Config:
    """An Alembic configuration pointing at the packaged scripts (for generating revisions
    too: ``command.revision(alembic_config(), ...)``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_PATH))
    return config


async def upgrade(database: Database, revision: str = "head") -> None:
    """Upgrade ``database`` to ``revision`` (default: the newest)."""
    async with database.transaction() as conn:
        if database.dialect == "postgresql":
            await conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
        # Sync seam: Alembic is synchronous; run_sync runs it on this connection's greenlet.
        await conn.run_sync(_upgrade, revision)


async def upgrade_database(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` (a settings URL) to ``revision``."""
    database = Database(url, pool_size=1, max_overflow=0)
    try:
        await upgrade(database, revision)
    finally:
        await database.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None if it was never migrated."""
    database = Database(url, pool_size=1, max_overflow=0)
    try:
        async with database.connect() as conn:
            return await conn.run_sync(_current_revision)
    finally:
        await database.dispose()


def head_revision() -> str | None:
    """The newest revision the package ships."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()

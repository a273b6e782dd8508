"""The relational database: one async engine for SQLite (embedded) or PostgreSQL (production).

Guarantees:

* ``transaction()`` yields a connection inside one transaction that commits when the block
  exits and rolls back when it raises. Everything written through it (state and outbox rows)
  becomes visible together or not at all.
* **SQLite has one writer.** Write transactions are serialised inside the process by an
  ``asyncio.Lock`` (writers queue instead of failing with "database is locked"), and each
  starts with ``BEGIN IMMEDIATE`` so the file's write lock is taken up front rather than on the
  first write, where SQLite could only fail the upgrade. Another process writing the same file
  is waited for up to ``busy_timeout``. Readers never take the lock: WAL mode lets them read a
  consistent snapshot while a writer works. A consequence used by the outbox: on SQLite
  commit order equals outbox sequence order.
* On PostgreSQL transactions run concurrently under READ COMMITTED, from a pool of
  ``pool_size`` connections (plus ``max_overflow``). The default is sized for one process
  running the web tier and every consumer: an overflow connection is closed when returned,
  so a pool smaller than the steady load opens a connection (TLS probe, statement cache
  lost) for a large share of transactions (measured: 112 new connections in 10 s of order
  entry with 10 + 10).

Disconnects on PostgreSQL are handled optimistically, not pessimistically. A pre-ping
(``pool_pre_ping``) would cost a round trip on every checkout, several per order, to guard
against an event that happens once per server restart. Instead:

* a pooled connection older than ``POSTGRES_POOL_RECYCLE_S`` is replaced on checkout, so none
  outlives an idle timeout of a firewall or proxy on the way;
* when a statement fails because its connection is gone, SQLAlchemy recognises the
  disconnect (``is_disconnect``), discards that connection and invalidates the whole pool:
  every connection opened before the failure is replaced on its next checkout, so one restart
  costs one failed statement per caller that happened to hold a connection, not one per
  pooled connection.

The trade-off: the first statement on a dead connection fails once (a ``DBAPIError`` with
``connection_invalidated`` set) instead of being silently reconnected. Its transaction is
rolled back and nothing of it is written, so the callers retry rather than this module: a bus
consumer's handler raises and its event is redelivered with backoff (acknowledged only once a
handler returned); broker reports and the outbox relay retry with backoff likewise; the web
tier answers an error the client retries (the readiness check answers 503 once, then passes
on a fresh connection). Retrying here instead would repeat statements whose outcome is
unknown, which only the callers (idempotent by event id, fill id or client order id) may do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_WRITE_OPTION = "tradeloom_write"
SQLITE_BUSY_TIMEOUT_MS = 10_000
POSTGRES_POOL_RECYCLE_S = 300

_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA synchronous=NORMAL",
)


def async_url(url: str) -> URL:
    """Map a settings URL (``sqlite:///PATH``, ``postgresql://...``, ``postgres://...``) to the
    async driver SQLAlchemy needs. A SQLite database must be a file: an in-memory database is
    private to each pooled connection, which would silently split the data."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError(f"{url!r}: SQLite needs a file path, e.g. sqlite:///var/tradeloom.db")
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"{url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


class Database:
    """An ``AsyncEngine`` with the transaction discipline described in the module docstring."""

    def __init__(self, url: str, *, pool_size: int = 30, max_overflow: int = 10) -> None:
        self._url = async_url(url)
        self._write_lock: asyncio.Lock | None = None
        self._reads: AsyncEngine | None = None
        if self._url.get_backend_name() == "sqlite":
            assert self._url.database is not None
            Path(self._url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._engine = create_async_engine(self._url)
            _configure_sqlite(self._engine)
            self._write_lock = asyncio.Lock()
        else:
            self._engine = create_async_engine(
                self._url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_pre_ping=False,
                pool_recycle=POSTGRES_POOL_RECYCLE_S,
            )
            # Reads run in autocommit on the same pool: under READ COMMITTED each statement
            # sees its own snapshot inside a transaction too, so BEGIN and ROLLBACK around a
            # read bought nothing and cost two of its three round trips.
            self._reads = self._engine.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    @property
    def url(self) -> str:
        """The URL without its password, for logs."""
        return self._url.render_as_string(hide_password=True)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: commits when the block exits, rolls back if it raises."""
        async with self._writer_turn(), self._engine.connect() as conn:
            if self._write_lock is not None:
                await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    @contextlib.asynccontextmanager
    async def single_statement(self) -> AsyncIterator[AsyncConnection]:
        """A write whose block sends one statement on PostgreSQL: there the connection is in
        autocommit, so that statement is its own transaction (atomic, one round trip, no
        BEGIN or COMMIT, and row locks held only while it runs). On SQLite it is
        :meth:`transaction`, so a block that needs several statements there (SQLite has no
        data-modifying CTEs to combine them) still commits them together."""
        if self._reads is None:
            async with self.transaction() as conn:
                yield conn
            return
        async with self._reads.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads. On PostgreSQL it is in autocommit: each statement is its
        own transaction (one round trip, no BEGIN or ROLLBACK), which READ COMMITTED gives a
        statement anyway. A block that must see one snapshot across statements sets
        ``isolation_level="REPEATABLE READ"`` on the connection first (the rebuild and verify
        commands do), which begins a real transaction; one that writes uses
        :meth:`transaction`. On SQLite whatever it began is rolled back at the end."""
        async with (self._reads or self._engine).connect() as conn:
            yield conn

    async def ping(self) -> None:
        """Raise unless the database answers ``SELECT 1``; for readiness checks."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    def _writer_turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self._write_lock is None:
            return contextlib.nullcontext()
        return self._write_lock


async def insert_if_absent(
    conn: AsyncConnection,
    table: Table,
    row: dict[str, Any],
    *,
    conflict_on: tuple[str, ...] | None = None,
) -> bool:
    """Insert ``row`` unless ``table`` already holds a row with the same key; True if it was
    inserted. The key is ``conflict_on`` (columns of a unique constraint), by default the
    primary key. One ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL; SQLite 3.24+), so a
    duplicate needs no savepoint and leaves the transaction usable; any other violation still
    raises ``IntegrityError``. Under concurrency PostgreSQL waits for an uncommitted twin and
    then does nothing if it committed, so exactly one of two racing inserts returns True."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    columns = conflict_on or tuple(column.name for column in table.primary_key.columns)
    statement = dialect.insert(table).on_conflict_do_nothing(index_elements=columns)
    result = await conn.execute(statement, row)
    return result.rowcount == 1


INSERT_CHUNK = 500
"""Rows per multi-row INSERT where a dialect needs chunks: far below either dialect's limit
on bound parameters."""


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Take transaction control away from the sqlite3 driver, which would begin transactions
    lazily (and not at all for DDL), and begin them ourselves: ``BEGIN IMMEDIATE`` for writers,
    plain ``BEGIN`` for readers."""

    # Sync seam: pool and connection events run inside the driver's greenlet, synchronously.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        writer = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

"""The execution lock: at most one process consumes ``order.commands`` and talks to the broker.

Execution is one process per broker connection (see ``config.Service``), and reconciliation
at start makes a second one destructive: its venue (a fresh paper venue) knows none of the
first one's orders, so its first pass would cancel every live order and reject every claim
in flight. On PostgreSQL the engine therefore holds a session-level advisory lock
(:data:`EXECUTION_LOCK_ID`) for as long as it consumes commands; another process stands by
until it can take it. SQLite is the embedded deployment, one process per file: no lock.

Guarantees:

* **Held by one session.** The lock lives on one connection, checked out of the pool for as
  long as the process holds or waits for the lock (in autocommit, so it is never idle in a
  transaction). PostgreSQL releases a
  session lock when its session ends, so a holder that died frees it by itself.
* **Loss is noticed.** :meth:`ExecutionLock.lost` asks every ``check_every`` seconds whether
  the lock's session still holds it, and returns when it does not, or the connection fails or
  does not answer within ``check_timeout``. The engine then refuses further batches, stops
  consuming, and only then :meth:`release` s (an unlock, or the connection closed for good if
  that fails: the session and its lock end). A network partition ends the session on the
  server only when its TCP keepalive gives up: until then no standby takes over (an
  availability gap, never two holders).
* **No spin.** A standby tries the lock every ``retry_every`` seconds (``pg_try_advisory_lock``,
  which never blocks); a try that fails on the database is a "no" and is tried again.
* **Cancel-safe.** A try or a release cancelled half-way closes its connection, so a lock
  granted just as the wait was cancelled cannot stay held unseen.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.storage.database import Database

log = structlog.get_logger("tradeloom.execution.lock")

# Next to the migration (…0001) and outbox relay (…0002) locks: "trlm" 3.
EXECUTION_LOCK_ID = 0x7472_6C6D_0003

_TRY_LOCK = select(func.pg_try_advisory_lock(EXECUTION_LOCK_ID))
_UNLOCK = select(func.pg_advisory_unlock(EXECUTION_LOCK_ID))
# Not "is the session alive" but "does it still hold an advisory lock" (this connection holds
# no other): a session PostgreSQL ended and a lock released by mistake both read False.
_STILL_HELD = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
    " AND pid = pg_backend_pid() AND granted)"
)


class ExecutionLock:
    """The PostgreSQL execution lock of one process; on SQLite always granted."""

    def __init__(
        self,
        database: Database,
        *,
        retry_every: float = 2.0,
        check_every: float = 2.0,
        check_timeout: float = 5.0,
    ) -> None:
        self._database = database
        self.retry_every = retry_every
        self._check_every = check_every
        self._check_timeout = check_timeout
        self._conn: AsyncConnection | None = None
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this process holds the lock, as far as it last saw."""
        return self._held

    @property
    def needed(self) -> bool:
        """Whether several processes could run execution on this database at all."""
        return self._database.dialect == "postgresql"

    async def try_take(self) -> bool:
        """Take the lock if no other session holds it; True if this process holds it now.
        A database that cannot be asked answers no (logged)."""
        if not self.needed:
            self._held = True
            return True
        if self._held:
            return True
        try:
            conn = await self._connection()
            self._held = bool(await conn.scalar(_TRY_LOCK))
        except Exception as exc:
            log.warning("execution.lock_unavailable", error=repr(exc))
            await self._drop()
            return False
        except BaseException:
            await self._drop()  # cancelled: a grant may have landed unseen
            raise
        return self._held

    async def take(self) -> None:
        """Wait until this process holds the lock, trying every ``retry_every`` seconds."""
        while True:
            if await self.try_take():
                return
            await asyncio.sleep(self.retry_every)

    async def lost(self) -> None:
        """Return once the held lock looks lost: its connection failed or stopped answering,
        or its session no longer holds it. The caller stops consuming, then calls
        :meth:`release` (which closes the connection): in that order a lock that only looked
        lost (a slow answer) is given up after the last claim, never before. Never returns
        on SQLite."""
        if not self.needed:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self._check_every)
            conn = self._conn
            try:
                if conn is None:
                    raise ConnectionError("the lock's connection is gone")
                async with asyncio.timeout(self._check_timeout):
                    held = bool(await conn.scalar(_STILL_HELD))
                if not held:
                    raise ConnectionError("the session no longer holds the execution lock")
            except Exception as exc:
                log.error("execution.lock_lost", error=repr(exc))
                return

    async def release(self) -> None:
        """Release the lock (if held) and close its connection. If the unlock cannot be
        sent, the connection is invalidated instead, which ends the session and its lock."""
        conn, self._conn = self._conn, None
        was_held, self._held = self._held, False
        if conn is None:
            return
        try:
            async with asyncio.timeout(self._check_timeout):
                if was_held:
                    await conn.execute(_UNLOCK)
                await conn.close()
        except Exception as exc:
            log.warning("execution.lock_release_failed", error=repr(exc))
            await _close_for_good(conn)
        except BaseException:
            await _close_for_good(conn)
            raise

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            autocommit = self._database.engine.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = await autocommit.connect()
        return self._conn

    async def _drop(self) -> None:
        """Close the lock's connection for good (the sure way to end its session's lock)."""
        conn, self._conn = self._conn, None
        self._held = False
        if conn is not None:
            await _close_for_good(conn)


async def _close_for_good(conn: AsyncConnection) -> None:
    """Invalidate ``conn`` (its DBAPI connection is closed, never returned to the pool)."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()

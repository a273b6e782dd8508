"""Small test helpers shared by every layer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.storage.database import Database
from tradeloom.storage.outbox import KEY_LOCK_CLASS, key_lock_id

T = TypeVar("T")


async def eventually(
    predicate: Callable[[], bool],
    within: float = 10.0,
    *,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition",
) -> None:
    """Poll ``predicate`` until it is true; fail with ``message`` after ``within`` seconds.

    This is the one way tests wait for something asynchronous: no fixed sleeps.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"not true within {within:.1f}s: {text}")
        await asyncio.sleep(interval)


async def eventually_equals(
    read: Callable[[], Awaitable[T]], expected: T, within: float = 10.0, *, what: str = ""
) -> None:
    """Poll the coroutine ``read`` until it returns ``expected``; fail showing the last value
    (and ``what`` was awaited, when given)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (value := await read()) != expected:
        if loop.time() > deadline:
            waited = f" waiting until {what}" if what else ""
            raise AssertionError(
                f"expected {expected!r}, still {value!r} after {within:.1f}s{waited}"
            )
        await asyncio.sleep(0.005)


@contextlib.contextmanager
def statements_of(database: Database) -> Iterator[list[str]]:
    """Record the SQL text of every statement sent while the block runs (SQLite's BEGIN
    included: the driver sends it as a statement)."""
    seen: list[str] = []

    def record(*args: object) -> None:
        seen.append(str(args[2]))

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", record)


async def outbox_numbers_drawn(database: Database) -> object:
    """PostgreSQL: the last number the outbox's sequence gave (None before the first). It
    moves as soon as a row draws one, committed or not."""
    async with database.connect() as conn:
        name = (
            await conn.execute(text("SELECT pg_get_serial_sequence('outbox', 'sequence')"))
        ).scalar()
        assert name is not None
        query = text("SELECT last_value FROM pg_sequences WHERE sequencename = :name")
        return (await conn.execute(query, {"name": name.rpartition(".")[2]})).scalar()


async def hold_outbox_key_lock(conn: AsyncConnection, key: str) -> None:
    """PostgreSQL: take the outbox's lock of ``key`` in ``conn``'s transaction, as a writer
    of that key's events does until it commits."""
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(:lock_class, :key)"),
        {"lock_class": KEY_LOCK_CLASS, "key": key_lock_id(key)},
    )


async def outbox_key_lock_is_free(database: Database, key: str) -> bool:
    """PostgreSQL: whether another session could take the outbox's lock of ``key`` now."""
    values = {"lock_class": KEY_LOCK_CLASS, "key": key_lock_id(key)}
    async with database.connect() as conn:
        took = (
            await conn.execute(text("SELECT pg_try_advisory_lock(:lock_class, :key)"), values)
        ).scalar()
        if took:
            await conn.execute(text("SELECT pg_advisory_unlock(:lock_class, :key)"), values)
    return bool(took)

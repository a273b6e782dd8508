"""What every ``tradeloom`` subcommand shares: its settings, the one-line failure, and a
database opened for one command.

A refused value or a failed backend prints one line (``tradeloom: ...``) and exits with
status 1; malformed options exit with status 2 (Typer's usage errors).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, TypeVar

import typer

from tradeloom.bootstrap import StartupError, open_database
from tradeloom.config import Settings
from tradeloom.storage.database import Database

T = TypeVar("T")


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the ``tradeloom`` callback loaded for this invocation."""
    settings = ctx.obj
    if not isinstance(settings, Settings):
        raise RuntimeError("settings were not loaded")
    return settings


def fail(message: str) -> NoReturn:
    typer.echo(f"tradeloom: {message}", err=True)
    raise typer.Exit(1)


async def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` on the configured (migrated) database, then close it; a database that
    cannot be opened fails the command with one line."""
    try:
        database = await open_database(settings)
    except StartupError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"cannot open the database (TRADELOOM_DATABASE_URL): {exc}")
    try:
        return await work(database)
    finally:
        await database.dispose()


async def cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until each has ended (a feed pump, a publisher)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task

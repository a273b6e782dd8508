"""``tradeloom positions``: what an operator checks about positions, P&L and cash.

* ``positions list --owner USER [--account ID]`` prints the user's positions and each
  account's cash, P&L and equity from the configured database, valued at last prices from the
  configured cache. With the default ``memory://`` cache this process has no prices (a price
  lives 5 s in the cache of the process that received it), and a cache that cannot be reached
  gives none either: the command says so on stderr and prints "-" for every value that needs
  a price, never a stale or zero one.
* ``positions verify`` recomputes every position and account's cash from the order events
  (``order_history``) and prints each difference; exit status 1 if there is any.

A failed backend prints one line and exits with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from tradeloom.accounts.repository import AccountRepository
from tradeloom.bootstrap import build_cache
from tradeloom.cli.common import fail, settings_of, with_database
from tradeloom.config import Settings
from tradeloom.domain.time import SystemClock
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.positions.queries import (
    AccountNotFound,
    AccountSummary,
    LastPriceSource,
    PositionQueries,
    PositionView,
)
from tradeloom.positions.verify import VerifyReport, verify_positions
from tradeloom.storage.database import Database

positions_app = typer.Typer(
    help="Positions, P&L and cash: list a user's, verify them all.", no_args_is_help=True
)
console = Console()
errors = Console(stderr=True)


NO_PRICES = "tradeloom: note: {why}; positions are listed without prices (-)"


@contextlib.asynccontextmanager
async def _last_prices(settings: Settings) -> AsyncIterator[LastPriceSource | None]:
    """The configured cache's last prices, or None (said on stderr) when it has none."""
    if settings.cache_url == "memory://":
        typer.echo(NO_PRICES.format(why="the cache is memory:// (no server's prices)"), err=True)
        yield None
        return
    cache = build_cache(settings)
    try:
        await cache.start()
    except Exception as exc:
        typer.echo(NO_PRICES.format(why=f"cannot reach the cache: {exc}"), err=True)
        with contextlib.suppress(Exception):
            await cache.close()
        yield None
        return
    try:
        yield LastPrices(cache, SystemClock())
    finally:
        await cache.close()


# -- list -------------------------------------------------------------------------------------


@positions_app.command("list")
def positions_list(
    ctx: typer.Context,
    owner: Annotated[str, typer.Option(help="the user whose positions to list")],
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
) -> None:
    """Print the user's positions (flat ones too) and each account's cash, P&L and equity."""
    settings = settings_of(ctx)

    async def read(database: Database) -> tuple[list[PositionView], list[AccountSummary]]:
        async with _last_prices(settings) as prices:
            queries = PositionQueries(database, prices)
            ids = [account] if account else await _account_ids(database, owner)
            summaries = [await queries.account_summary(owner, i) for i in ids]
            return await queries.positions(owner, account), summaries

    try:
        views, summaries = asyncio.run(with_database(settings, read))
    except AccountNotFound as exc:
        fail(str(exc))
    if not summaries:
        console.print(f"no accounts of {owner}", highlight=False)
        return
    console.print(_positions_table(owner, views) if views else f"no positions of {owner}")
    console.print(_summary_table(summaries))


async def _account_ids(database: Database, owner: str) -> list[str]:
    return [a.account_id for a in await AccountRepository(database).list_for_owner(owner)]


def _amount(value: Decimal | None) -> str:
    return "-" if value is None else str(value)


def _positions_table(owner: str, views: list[PositionView]) -> Table:
    table = Table(title=f"positions of {owner}")
    columns = ("account", "symbol", "quantity", "average cost", "realized P&L", "fees")
    for column in (*columns, "mark", "market value", "unrealized P&L"):
        table.add_column(column, justify="left" if column in ("account", "symbol") else "right")
    for view in views:
        table.add_row(
            view.account_id,
            view.symbol,
            *(
                _amount(value)
                for value in (
                    view.quantity,
                    view.average_cost,
                    view.realized_pnl,
                    view.fees,
                    view.mark,
                    view.market_value,
                    view.unrealized_pnl,
                )
            ),
        )
    return table


def _summary_table(summaries: list[AccountSummary]) -> Table:
    table = Table(title="accounts")
    columns = ("account", "currency", "opening cash", "cash", "realized P&L", "unrealized P&L")
    for column in (*columns, "equity"):
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    for s in summaries:
        table.add_row(
            s.account_id,
            s.currency,
            *(
                _amount(value)
                for value in (s.opening_cash, s.cash, s.realized_pnl, s.unrealized_pnl, s.equity)
            ),
        )
    return table


# -- verify -----------------------------------------------------------------------------------


@positions_app.command("verify")
def positions_verify(
    ctx: typer.Context,
    account: Annotated[
        list[str] | None, typer.Option(help="only this account (repeat for more)")
    ] = None,
    page_size: Annotated[int, typer.Option(min=1, help="order events read per query")] = 1000,
) -> None:
    """Recompute positions and cash from the order events; exit 1 on any difference."""
    settings = settings_of(ctx)
    report = asyncio.run(with_database(settings, lambda db: _verify(db, account, page_size)))
    for d in report.differences:
        where = d.account_id if d.symbol is None else f"{d.account_id} {d.symbol}"
        typer.echo(f"difference: {where} {d.field}: stored {d.stored}, recomputed {d.recomputed}")
    typer.echo(
        f"checked {report.positions} positions of {report.accounts} accounts "
        f"from {report.fill_events} fill events: {len(report.differences)} differences"
    )
    if not report.consistent:
        raise typer.Exit(1)


async def _verify(database: Database, accounts: list[str] | None, page_size: int) -> VerifyReport:
    with Progress(
        TextColumn("reading fill events"),
        BarColumn(),
        MofNCompleteColumn(),
        console=errors,
        transient=True,
    ) as progress:
        task = progress.add_task("verify", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return await verify_positions(
            database, accounts=accounts or None, page_size=page_size, progress=advance
        )

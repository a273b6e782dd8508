"""``tradeloom orders``: a user's orders from the read model, and its rebuild.

* ``list`` / ``show`` / ``history`` read the order read model as the user ``--owner`` sees it
  (only the orders of accounts that user owns);
* ``rebuild`` folds every view again from the recorded history, prints what differs from the
  live views and repairs them (``--check``: only report, exit 1 if anything differs).

Malformed options print the bad option and exit with status 2; an order that is not found,
or a backend that fails, prints one line and exits with status 1.
"""

from __future__ import annotations

import asyncio
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tradeloom.cli.common import fail, settings_of, with_database
from tradeloom.domain.order_view import OrderView
from tradeloom.oms.queries import MAX_PAGE, InvalidQuery, OrderHistoryEntry, OrderPage, OrderQueries
from tradeloom.oms.rebuild import RebuildReport, rebuild_order_views
from tradeloom.storage.database import Database

orders_app = typer.Typer(
    help="Orders as users see them (list, show, history) and the read model's rebuild.",
    no_args_is_help=True,
)
console = Console()
progress_console = Console(stderr=True)


class StatusChoice(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    ALL = "all"


OwnerOption = Annotated[str, typer.Option(help="the user whose orders to read")]
OrderArgument = Annotated[str, typer.Argument(help="the order id")]


def _bad(option: str, message: str) -> NoReturn:
    raise typer.BadParameter(message, param_hint=f"'{option}'")


def _utc_time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        _bad(option, f"expected an ISO 8601 time such as 2025-03-14T09:30:00Z, got {text!r}")
    if moment.utcoffset() is None:
        _bad(option, f"{text!r} has no time zone; add Z for UTC")
    return moment.astimezone(UTC)


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, StrEnum):
        return value.value
    return str(value)


@orders_app.command("list")
def orders_list(
    ctx: typer.Context,
    owner: OwnerOption,
    account: Annotated[str | None, typer.Option(help="only this account's orders")] = None,
    status: Annotated[StatusChoice, typer.Option(help="open, closed or all")] = StatusChoice.ALL,
    symbol: Annotated[str | None, typer.Option(help="only this symbol")] = None,
    since: Annotated[str | None, typer.Option(help="submitted at or after (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="submitted before (ISO 8601)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_PAGE, help="orders per page")] = 50,
    after: Annotated[str | None, typer.Option(help="the cursor a previous page printed")] = None,
) -> None:
    """Print a page of the user's orders, newest first, and the cursor of the next page."""
    settings = settings_of(ctx)
    window = (_utc_time(since, "--since"), _utc_time(until, "--until"))

    async def read(database: Database) -> OrderPage:
        return await OrderQueries(database).list(
            owner,
            account_id=account,
            status=status.value,
            symbol=symbol,
            since=window[0],
            until=window[1],
            limit=limit,
            after=after,
        )

    try:
        page = asyncio.run(with_database(settings, read))
    except InvalidQuery as exc:
        _bad(f"--{exc.field}", exc.message)
    if not page.items:
        console.print(f"no orders of {owner}", highlight=False)
    else:
        console.print(_orders_table(owner, page.items))
    if page.next_cursor is not None:
        console.print(f"next page: --after {page.next_cursor}", highlight=False, soft_wrap=True)


def _orders_table(owner: str, views: tuple[OrderView, ...]) -> Table:
    table = Table(title=f"orders of {owner}")
    table.add_column("order", overflow="fold")
    for header in ("account", "symbol", "side", "type"):
        table.add_column(header)
    for header in ("quantity", "filled", "avg price"):
        table.add_column(header, justify="right")
    for header in ("status", "submitted (UTC)"):
        table.add_column(header)
    for view in views:
        table.add_row(
            view.order_id,
            view.account_id,
            view.symbol,
            view.side.value,
            view.order_type.value,
            _text(view.quantity),
            _text(view.filled_quantity),
            _text(view.average_fill_price),
            view.status.value,
            view.submitted_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    return table


@orders_app.command("show")
def orders_show(ctx: typer.Context, order_id: OrderArgument, owner: OwnerOption) -> None:
    """Print every field of one of the user's orders."""
    settings = settings_of(ctx)

    async def read(database: Database) -> OrderView | None:
        return await OrderQueries(database).get(owner, order_id)

    view = asyncio.run(with_database(settings, read))
    if view is None:
        fail(f"order {order_id} not found for {owner}")
    table = Table(title=f"order {order_id}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for field in fields(OrderView):
        table.add_row(field.name, _text(getattr(view, field.name)))
    console.print(table)


@orders_app.command("history")
def orders_history(ctx: typer.Context, order_id: OrderArgument, owner: OwnerOption) -> None:
    """Print the events of one of the user's orders, in the order the read model folds them."""
    settings = settings_of(ctx)

    async def read(database: Database) -> list[OrderHistoryEntry]:
        return await OrderQueries(database).history(owner, order_id)

    entries = asyncio.run(with_database(settings, read))
    if not entries:
        fail(f"order {order_id} not found for {owner}")
    table = Table(title=f"history of order {order_id}")
    for header in ("occurred (UTC)", "event", "applied"):
        table.add_column(header)
    for header in ("details", "event id", "correlation"):  # folded, never cut short
        table.add_column(header, overflow="fold")
    for entry in entries:
        details = ", ".join(
            f"{name}={_text(value)}"
            for name, value in entry.payload.items()
            if name not in ("type", "order_id") and value is not None
        )
        applied = "yes" if entry.applied else f"no: {entry.note}"
        table.add_row(
            entry.occurred_at.strftime("%Y-%m-%d %H:%M:%S.%f"),
            entry.event_type,
            applied,
            details,
            entry.event_id,
            entry.correlation_id,
        )
    console.print(table)


@orders_app.command("rebuild")
def orders_rebuild(
    ctx: typer.Context,
    check: Annotated[
        bool, typer.Option("--check", help="only compare; exit 1 when the views differ")
    ] = False,
    chunk_size: Annotated[int, typer.Option(min=1, max=10_000, help="orders read per query")] = 500,
) -> None:
    """Fold every order view again from its history, print the differences from the live
    views, and (unless --check) replace the differing views in one transaction."""
    settings = settings_of(ctx)
    with Progress(
        TextColumn("folding order views"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=progress_console,
        transient=True,
    ) as progress:
        task = progress.add_task("rebuild", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        async def run(database: Database) -> RebuildReport:
            return await rebuild_order_views(
                database, repair=not check, chunk_size=chunk_size, progress=advance
            )

        report = asyncio.run(with_database(settings, run))
    _print_report(report)
    if check and not report.equal:
        raise typer.Exit(1)


def _print_report(report: RebuildReport) -> None:
    if report.differences:
        table = Table(title="differences (live view vs rebuilt from history)")
        table.add_column("order", overflow="fold")
        for header in ("field", "live", "rebuilt"):
            table.add_column(header)
        for difference in report.differences:
            table.add_row(
                difference.order_id,
                difference.field,
                _text(difference.live),
                _text(difference.rebuilt),
            )
        console.print(table)
        hidden = report.difference_count - len(report.differences)
        if hidden:
            console.print(f"... and {hidden} more differences", highlight=False)
    differing, fields_differing = len(report.differing_orders), report.difference_count
    if report.equal:
        summary = f"order views match their history: {report.orders} orders checked"
    elif report.repaired:
        summary = (
            f"repaired {differing} of {report.orders} order views "
            f"({fields_differing} fields differed)"
        )
    else:
        summary = (
            f"{differing} of {report.orders} order views differ from their history "
            f"({fields_differing} fields); run without --check to repair"
        )
    console.print(summary, highlight=False)

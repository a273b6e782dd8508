"""The ``tradeloom`` command.

Settings come from ``TRADELOOM_*`` variables; the options before the subcommand override them
(``tradeloom --bus-url nats://127.0.0.1:4222 serve``). A bad setting prints one line naming
the variable and exits with status 2.
"""

from __future__ import annotations

import asyncio
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer

from tradeloom.cli.admin import accounts_app, users_app
from tradeloom.cli.common import settings_of
from tradeloom.cli.demo import demo
from tradeloom.cli.market import market_app
from tradeloom.cli.orders import orders_app
from tradeloom.cli.positions import positions_app
from tradeloom.config import ConfigError, load_settings
from tradeloom.observability.logging import configure_logging

app = typer.Typer(
    help="Tradeloom: a multi-user algorithmic trading platform.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(market_app, name="market")
app.add_typer(config_app, name="config")
app.add_typer(accounts_app, name="accounts")
app.add_typer(users_app, name="users")
app.add_typer(orders_app, name="orders")
app.command("demo")(demo)
app.add_typer(positions_app, name="positions")


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Annotated[
        str | None, typer.Option(help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    ] = None,
    bus_url: Annotated[str | None, typer.Option(help="memory:// or nats://HOST:PORT")] = None,
    cache_url: Annotated[str | None, typer.Option(help="memory:// or redis://HOST:PORT/DB")] = None,
    archive_url: Annotated[str | None, typer.Option(help="folder of the audit archive")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = None,
) -> None:
    try:
        settings = load_settings(
            database_url=database_url,
            bus_url=bus_url,
            cache_url=cache_url,
            archive_url=archive_url,
            log_level=log_level,
        )
    except ConfigError as exc:
        typer.echo(f"tradeloom: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.service_name, settings.log_level)
    ctx.obj = settings


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    services: Annotated[
        str | None,
        typer.Option(
            help="consuming services to run here: all (default), none, or a comma-separated "
            "list of market-data, execution, read-side; run the rest in other processes"
        ),
    ] = None,
) -> None:
    """Run the platform and its web app in this process."""
    from tradeloom.bootstrap import build_platform
    from tradeloom.web.app import create_app
    from tradeloom.web.server import serve as serve_app

    settings = settings_of(ctx)
    if services is not None:
        try:
            settings = load_settings(**{**settings.model_dump(), "services": services})
        except ConfigError as exc:
            typer.echo(f"tradeloom: {exc}", err=True)
            raise typer.Exit(2) from None
    application = create_app(build_platform(settings), settle_heap_after_start=True)
    serve_app(application, host or settings.http_host, port or settings.http_port)


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Apply the schema migrations to the configured database (idempotent)."""
    from tradeloom.storage.migrate import current_revision, upgrade_database

    settings = settings_of(ctx)
    asyncio.run(upgrade_database(settings.database_url, revision))
    now = asyncio.run(current_revision(settings.database_url))
    typer.echo(f"database at revision {now}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the schema revision the configured database is at."""
    from tradeloom.storage.migrate import current_revision, head_revision

    settings = settings_of(ctx)
    now = asyncio.run(current_revision(settings.database_url))
    typer.echo(f"database at revision {now or 'none'} (latest: {head_revision()})")


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective settings, one TRADELOOM_* variable a line."""
    settings = settings_of(ctx)
    for name, value in settings.model_dump().items():
        typer.echo(f"TRADELOOM_{name.upper()}={_without_password(str(value))}")


def _without_password(value: str) -> str:
    """Mask the password of a URL so settings can be printed safely."""
    parts = urlsplit(value)
    if not parts.password:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))

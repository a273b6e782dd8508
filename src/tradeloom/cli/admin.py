"""``tradeloom accounts`` and ``tradeloom users``: what an operator administers.

* ``accounts create`` / ``accounts list`` and ``users create`` / ``users list`` work on the
  configured database. ``users create`` also opens the user's default trading account.
* ``users limits`` and ``users halt`` / ``reduce-only`` / ``resume`` work on the configured
  cache, where the risk engine reads limits and trading states on every order. With the
  default ``memory://`` cache that is this process's own memory, so a change cannot reach a
  running server: the commands say so on stderr (and still run).

A refused value or a failed backend prints one line and exits with status 1; malformed
options exit with status 2, as everywhere in the ``tradeloom`` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tradeloom.accounts.repository import AccountRepository, create_account
from tradeloom.bootstrap import (
    build_cache,
    build_limits_store,
    build_passwords,
)
from tradeloom.cli.common import fail, settings_of, with_database
from tradeloom.config import Settings
from tradeloom.domain.accounts import Account, DuplicateAccount, InvalidAccount
from tradeloom.domain.errors import DomainError, InvalidNumber
from tradeloom.domain.numbers import ZERO, exact
from tradeloom.risk.limits import PLATFORM, InvalidLimits, LimitsStore, RiskLimits, TradingState
from tradeloom.storage.database import Database
from tradeloom.users.model import InvalidUsername, Role, User, normalize_username
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import DEFAULT_OPENING_CASH, Registration, UserService

accounts_app = typer.Typer(help="Trading accounts: create, list.", no_args_is_help=True)
users_app = typer.Typer(
    help="Users (create, list), their risk limits and trading states (the kill switch).",
    no_args_is_help=True,
)
console = Console()

T = TypeVar("T")

MEMORY_CACHE_WARNING = (
    "tradeloom: warning: the cache is memory://, so {what} only this process and no running "
    "server; set TRADELOOM_CACHE_URL=redis://HOST:PORT/DB (or --cache-url) to the server's cache"
)


def _amount(text: str, option: str, *, positive: bool = False) -> Decimal:
    """An exact, finite, non-negative (or positive) amount from an option's text."""
    try:
        number = exact(text.strip(), field=option)
    except InvalidNumber as exc:
        fail(str(exc))
    if number < ZERO or (positive and number == ZERO):
        fail(f"{option}: must be {'positive' if positive else 'zero or more'}, got {text}")
    return number


# -- accounts ---------------------------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(
    ctx: typer.Context,
    account_id: Annotated[str, typer.Argument(help="1-64 letters, digits or ._:- characters")],
    owner: Annotated[str, typer.Option(help="the user who may trade the account")],
    cash: Annotated[str, typer.Option(help="opening cash, an exact decimal, e.g. 100000")],
    currency: Annotated[str, typer.Option(help="three capital letters")] = "USD",
) -> None:
    """Open an account with its opening cash; an account id is never reused."""
    settings = settings_of(ctx)
    opening = _amount(cash, "--cash")

    async def create(database: Database) -> Account:
        return await create_account(database, account_id, owner, opening, currency)

    try:
        account = asyncio.run(with_database(settings, create))
    except (DuplicateAccount, InvalidAccount) as exc:
        fail(str(exc))
    console.print(
        f"created account {account.account_id} for {account.owner}: "
        f"{account.opening_cash} {account.currency} opening cash",
        highlight=False,
    )


@accounts_app.command("list")
def accounts_list(
    ctx: typer.Context,
    owner: Annotated[str | None, typer.Option(help="only this user's accounts")] = None,
) -> None:
    """Print a table of accounts, oldest first."""
    settings = settings_of(ctx)
    found = asyncio.run(with_database(settings, lambda database: _accounts(database, owner)))
    if not found:
        console.print(f"no accounts{f' of {owner}' if owner else ''}", highlight=False)
        return
    table = Table(title=f"accounts of {owner}" if owner else "accounts")
    for column in ("account", "owner", "currency", "opening cash", "cash", "created (UTC)"):
        table.add_column(column, justify="right" if "cash" in column else "left")
    for account in found:
        table.add_row(
            account.account_id,
            account.owner,
            account.currency,
            str(account.opening_cash),
            str(account.cash),
            account.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


async def _accounts(database: Database, owner: str | None) -> list[Account]:
    return await AccountRepository(database).list_accounts(owner)


# -- users ------------------------------------------------------------------------------------


def _password(from_stdin: bool) -> str:
    """The first line of stdin (without its line ending), or a hidden prompt asked twice."""
    if not from_stdin:
        return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))
    password = typer.get_text_stream("stdin").readline().rstrip("\r\n")
    if not password:
        fail("--password-stdin: no password on stdin")
    return password


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="3-32 characters of a-z, 0-9, _ . -")],
    admin: Annotated[bool, typer.Option("--admin", help="an administrator, not a trader")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin's first line")
    ] = False,
    cash: Annotated[
        str, typer.Option(help="opening cash of the default account, an exact decimal")
    ] = str(DEFAULT_OPENING_CASH),
    currency: Annotated[str, typer.Option(help="the default account's currency")] = "USD",
    account_id: Annotated[
        str | None, typer.Option(help="the default account's id (default: a new UUIDv7)")
    ] = None,
) -> None:
    """Create a user (asks for the password unless --password-stdin) and their account."""
    settings = settings_of(ctx)
    opening = _amount(cash, "--cash")
    password = _password(password_stdin)
    role = Role.ADMIN if admin else Role.TRADER

    async def create(database: Database) -> Registration:
        service = UserService(
            UserRepository(database), build_passwords(settings), AccountRepository(database)
        )
        return await service.register(
            username,
            password,
            role=role,
            opening_cash=opening,
            currency=currency,
            account_id=account_id,
        )

    try:
        registration = asyncio.run(with_database(settings, create))
    except DomainError as exc:
        fail(str(exc))
    account = registration.account
    console.print(
        f"created {role} {registration.user.username} with account {account.account_id}: "
        f"{account.opening_cash} {account.currency} opening cash",
        highlight=False,
    )


@users_app.command("list")
def users_list(ctx: typer.Context) -> None:
    """Print a table of users with their accounts, oldest first."""
    settings = settings_of(ctx)
    found, accounts = asyncio.run(with_database(settings, _users_and_accounts))
    if not found:
        console.print("no users", highlight=False)
        return
    owned: dict[str, list[str]] = defaultdict(list)
    for account in accounts:
        owned[account.owner].append(account.account_id)
    table = Table(title="users")
    for column in ("user", "role", "status", "accounts", "created (UTC)"):
        table.add_column(column)
    for user in found:
        table.add_row(
            user.username,
            user.role.value,
            "disabled" if user.disabled else "active",
            ", ".join(owned[user.username]),
            user.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


async def _users_and_accounts(database: Database) -> tuple[list[User], list[Account]]:
    return (
        await UserRepository(database).list_users(),
        await AccountRepository(database).list_accounts(),
    )


async def _with_limits(settings: Settings, work: Callable[[LimitsStore], Awaitable[T]]) -> T:
    cache = build_cache(settings)
    try:
        await cache.start()
    except Exception as exc:
        with contextlib.suppress(Exception):  # the start failure is what the operator needs
            await cache.close()
        fail(f"cannot reach the cache (TRADELOOM_CACHE_URL): {exc}")
    try:
        return await work(build_limits_store(settings, cache))
    finally:
        await cache.close()


def _warn_if_memory_cache(settings: Settings, *, changes: bool = True) -> None:
    if settings.cache_url == "memory://":
        what = "this change lasts for" if changes else "these are the limits of"
        typer.echo(MEMORY_CACHE_WARNING.format(what=what), err=True)


def _user(user: str) -> str:
    """The username in its canonical form: the one risk reads limits and states under (a
    halt stored for ``Alice`` would otherwise be a halt nobody reads)."""
    try:
        return normalize_username(user)
    except InvalidUsername as exc:
        raise typer.BadParameter(str(exc), param_hint="USER") from None


@users_app.command("limits")
def users_limits(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="the user id")],
    max_order_notional: Annotated[
        str | None, typer.Option(help="largest order value, an exact decimal")
    ] = None,
    max_open_orders: Annotated[int | None, typer.Option(min=0, help="open orders at most")] = None,
    max_concentration: Annotated[
        str | None, typer.Option(help="largest share of equity in one name, 0..1 (0.2 = 20%)")
    ] = None,
    order_rate: Annotated[
        int | None, typer.Option(min=1, help="orders admitted per rate window")
    ] = None,
    order_rate_window: Annotated[
        float | None, typer.Option(help="the rate window, seconds (> 0)")
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="drop the user's overrides first (back to defaults)")
    ] = False,
) -> None:
    """Set (or reset) the user's limits and print the effective ones; no option just prints.

    --reset drops the user's overrides first, then any other options given are set.
    """
    settings = settings_of(ctx)
    user = _user(user)
    changes: dict[str, object] = {}
    if max_order_notional is not None:
        changes["max_order_notional"] = _amount(
            max_order_notional, "--max-order-notional", positive=True
        )
    if max_open_orders is not None:
        changes["max_open_orders"] = max_open_orders
    if max_concentration is not None:
        changes["max_concentration"] = _amount(max_concentration, "--max-concentration")
    if order_rate is not None:
        changes["order_rate"] = order_rate
    if order_rate_window is not None:
        if not math.isfinite(order_rate_window) or order_rate_window <= 0:
            fail(f"--order-rate-window: must be positive seconds, got {order_rate_window}")
        changes["order_rate_window"] = order_rate_window
    _warn_if_memory_cache(settings, changes=reset or bool(changes))

    async def apply(store: LimitsStore) -> RiskLimits:
        if reset:
            await store.reset_limits(user)
        if changes:
            return await store.set_limits(user, **changes)
        return await store.limits_for(user)

    async def run(store: LimitsStore) -> dict[str, str]:
        return store.describe(await apply(store))

    try:
        described = asyncio.run(_with_limits(settings, run))
    except InvalidLimits as exc:
        fail(str(exc))
    typer.echo(f"limits of {user}:")
    width = max(len(name) for name in described)
    for name, value in described.items():
        typer.echo(f"  {name.ljust(width)}  {value}")


def _set_state(ctx: typer.Context, user: str | None, platform: bool, state: TradingState) -> None:
    settings = settings_of(ctx)
    if (user is None) == (not platform):
        both = ", not both" if platform else ""
        raise typer.BadParameter(f"give a user id or --platform{both}", param_hint="USER")
    if user is not None:
        user = _user(user)
    _warn_if_memory_cache(settings)

    async def run(store: LimitsStore) -> str:
        if user is None:
            await store.set_trading_state(PLATFORM, state)
            return f"platform: {await store.trading_state(PLATFORM)}"
        await store.set_trading_state(user, state)
        own = await store.trading_state(user)
        effective = (await store.settings_for(user)).state
        if effective == own:
            return f"user {user}: {own}"
        return f"user {user}: {own} (effective {effective}: the platform is {effective})"

    typer.echo(asyncio.run(_with_limits(settings, run)))


UserArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="USER", help="the user id (or --platform for everyone)", show_default=False
    ),
]
PlatformOption = Annotated[
    bool, typer.Option("--platform", help="the platform-wide state: every user at once")
]


@users_app.command("halt")
def users_halt(
    ctx: typer.Context, user: UserArgument = None, platform: PlatformOption = False
) -> None:
    """Halt trading (the kill switch): every order of the user, or of everyone, is refused."""
    _set_state(ctx, user, platform, TradingState.HALTED)


@users_app.command("reduce-only")
def users_reduce_only(
    ctx: typer.Context, user: UserArgument = None, platform: PlatformOption = False
) -> None:
    """Allow only orders that shrink a position, for the user or for everyone."""
    _set_state(ctx, user, platform, TradingState.REDUCE_ONLY)


@users_app.command("resume")
def users_resume(
    ctx: typer.Context, user: UserArgument = None, platform: PlatformOption = False
) -> None:
    """Make the user's (or the platform's) own state active again."""
    _set_state(ctx, user, platform, TradingState.ACTIVE)

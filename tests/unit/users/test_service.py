"""Registering users (with their default account) and authenticating them, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.accounts import DuplicateAccount, InvalidAccount
from tradeloom.domain.time import ManualClock
from tradeloom.users.model import (
    DuplicateUser,
    InvalidCredentials,
    InvalidPassword,
    InvalidUsername,
    Role,
    UserDisabled,
    UserNotFound,
)
from tradeloom.users.passwords import HashParameters, Passwords
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import UserService

PASSWORD = "correct horse battery"


async def test_registering_creates_the_user_and_a_default_account_they_own(
    users: UserService, accounts: AccountRepository, name: str
) -> None:
    registration = await users.register(name.upper(), PASSWORD)
    assert registration.user.username == name
    assert registration.user.role is Role.TRADER
    assert not registration.user.disabled
    [account] = await accounts.list_for_owner(name)
    assert account == registration.account
    assert (account.opening_cash, account.cash, account.currency) == (
        Decimal(100_000),
        Decimal(100_000),
        "USD",
    )


async def test_an_admin_with_chosen_account_terms(
    users: UserService, accounts: AccountRepository, name: str
) -> None:
    registration = await users.register(
        name,
        PASSWORD,
        role=Role.ADMIN,
        opening_cash="2500.25",
        currency="EUR",
        account_id=f"ACC-{name}",
    )
    assert registration.user.is_admin
    account = await accounts.get(f"ACC-{name}")
    assert account is not None
    assert (account.owner, account.opening_cash, account.currency) == (
        name,
        Decimal("2500.25"),
        "EUR",
    )


async def test_a_username_is_taken_once_even_by_racing_registrations(
    users: UserService, accounts: AccountRepository, name: str
) -> None:
    results = await asyncio.gather(
        users.register(name, PASSWORD), users.register(name, PASSWORD), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["DuplicateUser", "Registration"]
    assert len(await accounts.list_for_owner(name)) == 1
    with pytest.raises(DuplicateUser):
        await users.register(f"  {name.upper()} ", PASSWORD)


async def test_when_the_account_cannot_be_opened_no_user_is_left(
    users: UserService, repository: UserRepository, name: str
) -> None:
    await users.register(f"{name}-a", PASSWORD, account_id=f"ACC-{name}")
    with pytest.raises(DuplicateAccount):
        await users.register(f"{name}-b", PASSWORD, account_id=f"ACC-{name}")
    with pytest.raises(InvalidAccount):
        await users.register(f"{name}-c", PASSWORD, opening_cash="-1")
    assert await repository.get(f"{name}-b") is None
    assert await repository.get(f"{name}-c") is None


async def test_bad_terms_are_refused_before_anything_is_written(
    users: UserService, repository: UserRepository, name: str
) -> None:
    with pytest.raises(InvalidUsername):
        await users.register("x", PASSWORD)
    with pytest.raises(InvalidPassword):
        await users.register(name, "short")
    assert await repository.get(name) is None


async def test_only_the_right_password_authenticates(users: UserService, name: str) -> None:
    await users.register(name, PASSWORD)
    assert (await users.authenticate(f" {name.upper()}", PASSWORD)).username == name
    with pytest.raises(InvalidCredentials):
        await users.authenticate(name, PASSWORD + "x")
    with pytest.raises(InvalidCredentials):
        await users.authenticate(f"{name}-nobody", PASSWORD)
    with pytest.raises(InvalidCredentials):
        await users.authenticate("!", PASSWORD)


async def test_a_disabled_user_is_told_so_only_with_the_right_password(
    users: UserService, name: str
) -> None:
    await users.register(name, PASSWORD)
    assert (await users.set_disabled(name, True)).disabled
    with pytest.raises(InvalidCredentials):
        await users.authenticate(name, "wrong password")
    with pytest.raises(UserDisabled):
        await users.authenticate(name, PASSWORD)
    await users.set_disabled(name, False)
    assert (await users.authenticate(name, PASSWORD)).username == name


async def test_a_login_upgrades_a_hash_made_with_old_parameters(
    users: UserService, repository: UserRepository, accounts: AccountRepository, name: str
) -> None:
    await users.register(name, PASSWORD)
    stronger = HashParameters(time_cost=2, memory_cost=16, parallelism=1)
    upgraded = UserService(repository, Passwords(stronger), accounts)
    await upgraded.authenticate(name, PASSWORD)
    found = await repository.credentials(name)
    assert found is not None
    assert "m=16,t=2,p=1" in found[1]
    assert (await users.authenticate(name, PASSWORD)).username == name


async def test_unknown_users_are_not_found(users: UserService, name: str) -> None:
    with pytest.raises(UserNotFound):
        await users.get(name)
    with pytest.raises(UserNotFound):
        await users.get("not a name")
    with pytest.raises(UserNotFound):
        await users.set_disabled(name, True)


async def test_users_are_listed_oldest_first(
    users: UserService, clock: ManualClock, name: str
) -> None:
    for suffix in ("b", "a", "c"):
        await users.register(f"{name}-{suffix}", PASSWORD)
        clock.advance(timedelta(seconds=1))
    mine = [u.username for u in await users.list_users() if u.username.startswith(name)]
    assert mine == [f"{name}-b", f"{name}-a", f"{name}-c"]

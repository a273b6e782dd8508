"""Registering users and checking their passwords.

``register`` creates the user and their default trading account (the username is the
account's ``owner``). These are two writes in two stores' transactions; if the account cannot
be opened the user is deleted again, so a failed registration leaves nothing behind (a crash
between the two leaves a user without an account, which ``tradeloom accounts create --owner``
repairs).

``authenticate`` answers the same :class:`InvalidCredentials`, after the same hashing work, for
an unknown username and for a wrong password: nobody learns which usernames exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import structlog

from tradeloom.domain.accounts import Account
from tradeloom.domain.ids import new_id
from tradeloom.users.model import (
    InvalidCredentials,
    InvalidUsername,
    Role,
    User,
    UserDisabled,
    UserNotFound,
    check_password,
    normalize_username,
)
from tradeloom.users.passwords import Passwords
from tradeloom.users.repository import UserRepository

log = structlog.get_logger("tradeloom.users")

DEFAULT_OPENING_CASH = Decimal(100_000)
DEFAULT_CURRENCY = "USD"


class AccountOpener(Protocol):
    """Where a new user's default account is opened (``AccountRepository`` is one)."""

    async def create(
        self, account_id: str, owner: str, opening_cash: Decimal | int | str, currency: str = ...
    ) -> Account: ...


@dataclass(frozen=True, slots=True)
class Registration:
    user: User
    account: Account


class UserService:
    def __init__(
        self, repository: UserRepository, passwords: Passwords, accounts: AccountOpener
    ) -> None:
        self._repository = repository
        self._passwords = passwords
        self._accounts = accounts

    async def register(
        self,
        username: str,
        password: str,
        *,
        role: Role = Role.TRADER,
        opening_cash: Decimal | int | str = DEFAULT_OPENING_CASH,
        currency: str = DEFAULT_CURRENCY,
        account_id: str | None = None,
    ) -> Registration:
        """Create the user and their default account (id ``account_id``, by default a fresh
        UUIDv7). Raises ``InvalidUsername``, ``InvalidPassword``, ``DuplicateUser``, or the
        account's ``InvalidAccount``/``DuplicateAccount`` (then no user is left behind)."""
        name = normalize_username(username)
        check_password(password)
        user = await self._repository.create(name, await self._passwords.hash(password), role)
        try:
            account = await self._accounts.create(
                account_id or new_id(), name, opening_cash, currency
            )
        except BaseException:
            await self._repository.delete(name)
            raise
        return Registration(user, account)

    async def authenticate(self, username: str, password: str) -> User:
        """The user whose password this is; ``InvalidCredentials`` otherwise, and
        ``UserDisabled`` (only to a caller who knew the password) for a disabled user."""
        try:
            name = normalize_username(username)
        except InvalidUsername:
            name = None
        found = None if name is None else await self._repository.credentials(name)
        if found is None:
            await self._passwords.verify_unknown(password)
            raise InvalidCredentials("wrong username or password")
        user, stored = found
        if not await self._passwords.verify(stored, password):
            raise InvalidCredentials("wrong username or password")
        if user.disabled:
            raise UserDisabled(f"user {user.username} is disabled")
        await self._upgrade_hash(user.username, stored, password)
        return user

    async def get(self, username: str) -> User:
        """The user, or ``UserNotFound`` (a malformed name cannot exist, so it is not found)."""
        try:
            user = await self._repository.get(normalize_username(username))
        except InvalidUsername:
            user = None
        if user is None:
            raise UserNotFound(f"no user {username!r}")
        return user

    async def list_users(self) -> list[User]:
        return await self._repository.list_users()

    async def set_disabled(self, username: str, disabled: bool) -> User:
        user = await self.get(username)
        await self._repository.set_disabled(user.username, disabled)
        return await self.get(user.username)

    async def _upgrade_hash(self, username: str, stored: str, password: str) -> None:
        """Re-hash with the current parameters after they changed; a failure to store the new
        hash is logged and does not fail the login (the old hash still works)."""
        if not self._passwords.needs_rehash(stored):
            return
        try:
            await self._repository.set_password_hash(username, await self._passwords.hash(password))
        except Exception:
            log.exception("users.rehash_failed", user_id=username)

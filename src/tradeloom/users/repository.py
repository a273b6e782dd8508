"""Users in the database (the ``users`` table).

Guarantees: a username is taken once (the primary key decides, even when two creates race, on
SQLite and PostgreSQL alike: the loser gets :class:`DuplicateUser` and nothing is written);
only a password *hash* is ever stored; ``created_at`` is UTC from the injected clock. Callers
pass usernames already normalized (:func:`~tradeloom.users.model.normalize_username`).
Disabling or deleting a user changes the :class:`CredentialsVersion` (when given) before and
after the commit, so no process goes on trusting a remembered token of that user (within the
bounds that module states for a cache outage).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tradeloom.domain.time import Clock, SystemClock
from tradeloom.storage.database import Database
from tradeloom.storage.schema import users
from tradeloom.users.credentials_version import CredentialsVersion
from tradeloom.users.model import DuplicateUser, Role, User, UserNotFound


def user_from_row(row: Any) -> User:
    mapping = row._mapping
    return User(
        username=mapping["username"],
        role=Role(mapping["role"]),
        created_at=mapping["created_at"],
        disabled=bool(mapping["disabled"]),
    )


class UserRepository:
    def __init__(
        self,
        database: Database,
        clock: Clock | None = None,
        *,
        version: CredentialsVersion | None = None,
    ) -> None:
        self._database = database
        self._clock = clock or SystemClock()
        self._version = version

    async def create(self, username: str, password_hash: str, role: Role) -> User:
        user = User(username=username, role=role, created_at=self._clock.now())
        row = {
            "username": user.username,
            "password_hash": password_hash,
            "role": user.role.value,
            "disabled": user.disabled,
            "created_at": user.created_at,
        }
        try:
            async with self._database.transaction() as conn:
                await conn.execute(insert(users), [row])
        except IntegrityError:
            raise DuplicateUser(f"user {username!r} exists already") from None
        return user

    async def get(self, username: str) -> User | None:
        found = await self.credentials(username)
        return None if found is None else found[0]

    async def credentials(self, username: str) -> tuple[User, str] | None:
        """The user and their stored password hash, for a login."""
        async with self._database.connect() as conn:
            result = await conn.execute(select(users).where(users.c.username == username))
            row = result.first()
        return None if row is None else (user_from_row(row), row._mapping["password_hash"])

    async def list_users(self) -> list[User]:
        """Every user, oldest first (ties by username)."""
        query = select(users).order_by(users.c.created_at, users.c.username)
        async with self._database.connect() as conn:
            return [user_from_row(row) for row in await conn.execute(query)]

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        await self._update(username, password_hash=password_hash)

    async def set_disabled(self, username: str, disabled: bool) -> None:
        await self._credentials_changing()
        await self._update(username, disabled=disabled)
        await self._credentials_changing()

    async def delete(self, username: str) -> None:
        """Remove a user (and, by cascade, their API tokens); accounts are not touched."""
        await self._credentials_changing()
        async with self._database.transaction() as conn:
            await conn.execute(delete(users).where(users.c.username == username))
        await self._credentials_changing()

    async def _credentials_changing(self) -> None:
        """Before the commit and after it (what a request racing the commit remembered is
        dropped); never raises (see :mod:`~tradeloom.users.credentials_version`)."""
        if self._version is not None:
            await self._version.changed()

    async def _update(self, username: str, **values: Any) -> None:
        async with self._database.transaction() as conn:
            result = await conn.execute(
                update(users).where(users.c.username == username).values(**values)
            )
        if result.rowcount == 0:
            raise UserNotFound(f"no user {username!r}")

"""API tokens: long-lived credentials for programs (``Authorization: Bearer ...``).

A token is ``tl_`` followed by 32 random bytes (URL-safe base64). Only its SHA-256 is stored:
the token has 256 bits of entropy, so a fast hash is as safe as a slow one and a lookup costs
one indexed read. The token itself is returned once, by ``issue``, and can never be shown again.

Guarantees: a revoked token (or one of a user who is disabled or deleted) authenticates
nobody from the next request on; a user sees and revokes only their own tokens (another
user's token id is not found); a user holds at most ``max_per_user`` tokens (counted in the
issuing transaction: on PostgreSQL two issued at the same instant can pass the cap by one).

**Remembered tokens.** Given a :class:`~tradeloom.users.credentials_version.CredentialsVersion`,
a process remembers what a token authenticated, tagged with the version it read before the
database read, and trusts it while the version is unchanged and for at most ``remember_for``
seconds: one cache read a request instead of a database query (the query and SQLAlchemy cost
about a fifth of a quote read's CPU here). Revoking a token and disabling or deleting a user
change the version (see that module for why the "next request" guarantee holds across
processes); a change written in the database behind the platform's back is seen within
``remember_for``. An unknown token is never remembered, and an unreadable version means the
database is asked.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, func, insert, select

from tradeloom.domain.ids import new_id
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.storage.database import Database
from tradeloom.storage.schema import api_tokens, users
from tradeloom.users.credentials_version import CredentialsVersion
from tradeloom.users.model import TokenLimitReached, TokenNotFound, User
from tradeloom.users.repository import user_from_row

TOKEN_PREFIX = "tl_"
MAX_TOKEN_NAME = 64


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown about a token after it was issued: never the token."""

    token_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # shown once
    info: TokenInfo


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Built once and reused: every request with a token runs it, and building a select and its
# cache key cost more here than PostgreSQL's indexed read.
_AUTHENTICATE = (
    select(users, api_tokens.c.token_id)
    .join(api_tokens, api_tokens.c.username == users.c.username)
    .where(api_tokens.c.token_hash == bindparam("digest"))
)


@dataclass(frozen=True, slots=True)
class _Remembered:
    user: User
    token_id: str
    version: bytes
    until: float  # on the ``timer``'s scale


REMEMBER_FOR = 30.0
REMEMBER_AT_MOST = 100_000


class ApiTokens:
    def __init__(
        self,
        database: Database,
        clock: Clock | None = None,
        *,
        max_per_user: int = 50,
        version: CredentialsVersion | None = None,
        remember_for: float = REMEMBER_FOR,
        remember_at_most: int = REMEMBER_AT_MOST,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._clock = clock or SystemClock()
        self._max_per_user = max_per_user
        self._version = version
        self._remember_for = remember_for
        self._remember_at_most = remember_at_most
        self._timer = timer
        self._remembered: dict[str, _Remembered] = {}

    async def issue(self, username: str, name: str) -> IssuedToken:
        """A new token for ``username``; :class:`TokenLimitReached` past ``max_per_user``."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(token_id=new_id(), name=name, created_at=self._clock.now())
        row = {
            "token_id": info.token_id,
            "username": username,
            "name": name,
            "token_hash": token_digest(token),
            "created_at": info.created_at,
        }
        count = select(func.count()).select_from(api_tokens)
        async with self._database.transaction() as conn:
            held = (await conn.execute(count.where(api_tokens.c.username == username))).scalar()
            if (held or 0) >= self._max_per_user:
                raise TokenLimitReached(
                    f"{username} holds {self._max_per_user} tokens already; revoke one first"
                )
            await conn.execute(insert(api_tokens), [row])
        return IssuedToken(token=token, info=info)

    async def authenticate(self, token: str) -> tuple[User, str] | None:
        """The user a token belongs to and the token's id, or None for an unknown token or a
        disabled user."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_digest(token)
        version = await self._version.current() if self._version is not None else None
        if version is not None:
            known = self._remembered.get(digest)
            if known is not None and known.version == version and self._timer() < known.until:
                return known.user, known.token_id
        async with self._database.connect() as conn:
            row = (await conn.execute(_AUTHENTICATE, {"digest": digest})).first()
        if row is None:
            self._remembered.pop(digest, None)
            return None
        user = user_from_row(row)
        if user.disabled:
            self._remembered.pop(digest, None)
            return None
        token_id: str = row._mapping["token_id"]
        if version is not None:
            if len(self._remembered) >= self._remember_at_most:
                self._remembered.clear()  # rare; everyone is read from the database again
            until = self._timer() + self._remember_for
            self._remembered[digest] = _Remembered(user, token_id, version, until)
        return user, token_id

    async def list_for(self, username: str) -> list[TokenInfo]:
        """The user's tokens, oldest first."""
        query = (
            select(api_tokens.c.token_id, api_tokens.c.name, api_tokens.c.created_at)
            .where(api_tokens.c.username == username)
            .order_by(api_tokens.c.created_at, api_tokens.c.token_id)
        )
        async with self._database.connect() as conn:
            return [TokenInfo(*row) for row in await conn.execute(query)]

    async def revoke(self, username: str, token_id: str) -> None:
        """Delete the user's token; :class:`TokenNotFound` if they hold no such token."""
        statement = delete(api_tokens).where(
            api_tokens.c.token_id == token_id, api_tokens.c.username == username
        )
        if self._version is not None:
            await self._version.changed()
        async with self._database.transaction() as conn:
            result = await conn.execute(statement)
        if self._version is not None:
            await self._version.changed()  # drops what a request racing the commit remembered
        if result.rowcount == 0:
            raise TokenNotFound(f"no token {token_id!r}")

"""API tokens: long-lived credentials for programs (``Authorization: Bearer ...``).

A token is ``tl_`` followed by 32 random bytes (URL-safe base64). Only its SHA-256 is stored:
the token has 256 bits of entropy, so a fast hash is as safe as a slow one and a lookup costs
one indexed read. The token itself is returned once, by ``issue``, and can never be shown again.

Guarantees: a revoked token (or one of a user who is disabled or deleted) authenticates
nobody from the next request on; a user sees and revokes only their own tokens (another
user's token id is not found); a user holds at most ``max_per_user`` tokens (counted in the
issuing transaction: on PostgreSQL two issued at the same instant can pass the cap by one).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, func, insert, select

from tradeloom.domain.ids import new_id
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.storage.database import Database
from tradeloom.storage.schema import api_tokens, users
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


class ApiTokens:
    def __init__(
        self, database: Database, clock: Clock | None = None, *, max_per_user: int = 50
    ) -> None:
        self._database = database
        self._clock = clock or SystemClock()
        self._max_per_user = max_per_user

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
        async with self._database.connect() as conn:
            row = (await conn.execute(_AUTHENTICATE, {"digest": token_digest(token)})).first()
        if row is None:
            return None
        user = user_from_row(row)
        return None if user.disabled else (user, row._mapping["token_id"])

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
        async with self._database.transaction() as conn:
            result = await conn.execute(statement)
        if result.rowcount == 0:
            raise TokenNotFound(f"no token {token_id!r}")

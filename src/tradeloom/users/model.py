"""Users of the platform: who they are, what they may do, and why a request about one fails.

A username is the identity everything else hangs on: it is the ``owner`` of the user's
trading accounts, the key of their risk limits and trading state, and the scope of their
sessions and API tokens. It is normalized (surrounding blanks dropped, lower case) before it
is validated or compared, so ``Alice`` and ``alice`` are the same user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tradeloom.domain.errors import DomainError
from tradeloom.domain.time import require_utc

USERNAME = re.compile(r"^[a-z0-9_.-]{3,32}$")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # argon2 accepts more; a cap keeps one request's hashing bounded


class Role(StrEnum):
    """``admin`` administers users, limits and the kill switch; ``trader`` trades."""

    ADMIN = "admin"
    TRADER = "trader"


class InvalidUsername(DomainError, ValueError):
    code = "user.invalid_username"


class InvalidPassword(DomainError, ValueError):
    code = "user.invalid_password"


class DuplicateUser(DomainError):
    code = "user.duplicate"


class UserNotFound(DomainError):
    code = "user.not_found"


class InvalidCredentials(DomainError):
    """Wrong username or password. Deliberately the same for both, so an attacker cannot
    learn which usernames exist."""

    code = "auth.invalid_credentials"


class UserDisabled(DomainError):
    """The password was right but the user is disabled (told only to who knows it)."""

    code = "auth.user_disabled"


class TokenNotFound(DomainError):
    """No such token of this user (another user's token is not found either)."""

    code = "token.not_found"


class TokenLimitReached(DomainError):
    code = "token.limit_reached"


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: Role
    created_at: datetime
    disabled: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))
        require_utc(self.created_at, field="created_at")

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def normalize_username(text: str) -> str:
    """The canonical form of a username, or :class:`InvalidUsername`."""
    username = text.strip().lower()
    if not USERNAME.match(username):
        raise InvalidUsername(
            f"a username is 3-32 characters of a-z, 0-9, '_', '.' or '-', got {text!r}"
        )
    return username


def check_password(password: str) -> str:
    """``password`` if it is acceptable for a new user, else :class:`InvalidPassword`."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidPassword(
            f"a password is {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters long"
        )
    if not password.strip():
        raise InvalidPassword("a password must not be blank")
    return password

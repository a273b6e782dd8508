"""Users, their passwords, login sessions and API tokens: who may use the platform and as what.

* :mod:`.model`: ``User``, ``Role``, username and password rules, the errors.
* :mod:`.service`: ``UserService`` registers users (with their default trading account) and
  authenticates them.
* :mod:`.passwords`: argon2id hashing off the event loop.
* :mod:`.sessions`: ``SessionStore``, login sessions in the cache.
* :mod:`.tokens`: ``ApiTokens``, hashed bearer tokens in the database.
"""

from tradeloom.users.model import Role, User
from tradeloom.users.passwords import HashParameters, Passwords
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import Registration, UserService
from tradeloom.users.sessions import Session, SessionStore, SessionStoreUnavailable
from tradeloom.users.tokens import ApiTokens, IssuedToken, TokenInfo

__all__ = [
    "ApiTokens",
    "HashParameters",
    "IssuedToken",
    "Passwords",
    "Registration",
    "Role",
    "Session",
    "SessionStore",
    "SessionStoreUnavailable",
    "TokenInfo",
    "User",
    "UserRepository",
    "UserService",
]

"""One version of every credential's validity, kept in the shared cache.

A web process may remember what an API token authenticates (a database read saved on every
request) only as long as nothing changed since: the token was not revoked and its user not
disabled or deleted. :class:`CredentialsVersion` is the test of that. Every process reads the
same cache key on each request (one cache round trip instead of a database query), and a
change of any credential writes a NEW random value there, which no remembered entry carries.

Guarantees, for changes made through the platform (the token store and the user repository
call :meth:`CredentialsVersion.changed` before and after they commit):

* **From the next request on**, in every process: a request that reads the version after the
  change committed finds a new value, so it reads the database, which has the change. The
  change before the commit makes an entry remembered by a request racing the commit carry a
  version that the change after the commit replaces.
* **Random, not a counter**: a cache that lost the key (a restart of Redis, which keeps
  nothing on disk; an eviction) starts a new random version, which matches no entry. A counter
  would restart at a number old entries may carry.
* **Nothing is trusted blindly**: a cache that cannot be read gives no version (None), and a
  caller then reads the database; an entry is also forgotten after ``remember_for`` seconds
  (see :class:`~tradeloom.users.tokens.ApiTokens`), which bounds what a change made behind
  the platform's back (an edit in the database itself) can leave.
* **A security change is never refused for want of the cache.** Revoking a token or
  disabling a user must work during a cache outage, so a failed version change is logged (an
  error) and the change goes ahead. Every process that cannot read the cache asks the
  database anyway; only one that can (a partition) and holds an entry remembered before the
  change trusts it, for at most ``remember_for``.
"""

from __future__ import annotations

import secrets

import structlog

from tradeloom.cache.port import Cache

log = structlog.get_logger("tradeloom.users.credentials_version")

KEY = "auth:credentials_version"


class CredentialsVersion:
    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    async def current(self) -> bytes | None:
        """The current version, or None when it cannot be read (nothing remembered may be used
        then). A missing key gets a fresh random version."""
        try:
            value = await self._cache.get(KEY)
            if value is not None:
                return value
            fresh = secrets.token_hex(16).encode()
            if await self._cache.compare_and_set(KEY, None, fresh):
                return fresh
            return await self._cache.get(KEY)  # another process set it first
        except Exception as exc:
            log.warning("auth.credentials_version_unreadable", error=repr(exc))
            return None

    async def changed(self) -> bool:
        """A credential changed (or is about to): replace the version. Never raises: False
        (and an error logged) when the cache could not be written; see the module doc."""
        try:
            await self._cache.set(KEY, secrets.token_hex(16).encode())
        except Exception as exc:
            log.error("auth.credentials_version_not_changed", error=repr(exc))
            return False
        return True

"""Login sessions, kept in the cache (shared by every web process) with an expiry.

A session id is ``USERNAME.SECRET`` where SECRET is 32 random bytes (URL-safe base64). The
cache key is the SHA-256 of the whole id, so a leaked cache dump holds no usable session. The
username in the id lets one round trip (``get_many``) read the session together with the
user's *session epoch*; ``end_all`` bumps the epoch, which ends every session of the user at
once (on disabling them or changing their role), in every process.

Expiry: a session lives ``ttl`` seconds after its last refresh (sliding: a request refreshes
it at most every ``refresh_every`` seconds, one compare-and-set, so a session in use keeps
going and an idle one dies ``ttl`` after its last refresh) and never longer than
``max_lifetime`` after login.

Fail closed: when the cache cannot be reached every method raises
:class:`SessionStoreUnavailable`, which the web tier answers with 401 (logged out), never by
letting the request through.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import msgspec

from tradeloom.cache.port import Cache
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.users.model import USERNAME, Role, User

DEFAULT_TTL = 8 * 3600.0
DEFAULT_MAX_LIFETIME = 24 * 3600.0
_MAX_ID_LENGTH = 128


class SessionStoreUnavailable(Exception):
    """The cache holding sessions did not answer; treat the caller as logged out."""


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    username: str
    role: Role
    csrf_token: str


class _Record(msgspec.Struct, frozen=True):
    username: str
    role: str
    csrf: str
    epoch: int
    created: float  # UTC seconds since the epoch
    refreshed: float


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Record).decode


class SessionStore:
    def __init__(
        self,
        cache: Cache,
        clock: Clock | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        refresh_every: float | None = None,
    ) -> None:
        if not 0 < ttl <= max_lifetime:
            raise ValueError(f"expected 0 < ttl <= max_lifetime, got {ttl} and {max_lifetime}")
        self._cache = cache
        self._clock = clock or SystemClock()
        self.ttl = ttl
        self._max_lifetime = max_lifetime
        self._refresh_every = ttl / 16 if refresh_every is None else refresh_every

    async def create(self, user: User) -> Session:
        """A new session of ``user`` with a fresh CSRF token."""
        session = Session(
            session_id=f"{user.username}.{secrets.token_urlsafe(32)}",
            username=user.username,
            role=user.role,
            csrf_token=secrets.token_urlsafe(32),
        )
        now = self._now()
        try:
            epoch = _epoch(await self._cache.get(_epoch_key(user.username)))
            record = _Record(user.username, user.role.value, session.csrf_token, epoch, now, now)
            await self._cache.set(_session_key(session.session_id), _encode(record), self.ttl)
        except Exception as exc:
            raise SessionStoreUnavailable(str(exc) or type(exc).__name__) from exc
        return session

    async def get(self, session_id: str) -> Session | None:
        """The live session with this id, refreshed if due; None if it expired, was ended or
        never existed."""
        username = _username_of(session_id)
        if username is None:
            return None
        key = _session_key(session_id)
        try:
            raw, epoch = await self._cache.get_many([key, _epoch_key(username)])
            record = _valid(raw, username, _epoch(epoch))
            if record is None:
                return None
            if not await self._keep_alive(key, raw, record):
                return None
        except Exception as exc:
            raise SessionStoreUnavailable(str(exc) or type(exc).__name__) from exc
        return Session(session_id, record.username, Role(record.role), record.csrf)

    async def delete(self, session_id: str) -> None:
        try:
            await self._cache.delete(_session_key(session_id))
        except Exception as exc:
            raise SessionStoreUnavailable(str(exc) or type(exc).__name__) from exc

    async def end_all(self, username: str) -> None:
        """End every session of ``username``, in every process, from the next request on."""
        try:
            await self._cache.increment(_epoch_key(username))
        except Exception as exc:
            raise SessionStoreUnavailable(str(exc) or type(exc).__name__) from exc

    async def _keep_alive(self, key: str, raw: bytes | None, record: _Record) -> bool:
        """False when the session outlived ``max_lifetime``; else refresh it if due. A lost
        compare-and-set means another request refreshed (or logged out) meanwhile: fine."""
        now = self._now()
        left = record.created + self._max_lifetime - now
        if left <= 0:
            await self._cache.delete(key)
            return False
        if now - record.refreshed >= self._refresh_every:
            fresh = msgspec.structs.replace(record, refreshed=now)
            await self._cache.compare_and_set(key, raw, _encode(fresh), min(self.ttl, left))
        return True

    def _now(self) -> float:
        return self._clock.now().timestamp()


def _valid(raw: bytes | None, username: str, epoch: int) -> _Record | None:
    if raw is None:
        return None
    try:
        record = _decode(raw)
    except msgspec.DecodeError:
        return None
    if record.username != username or record.epoch != epoch:
        return None
    return record


def _username_of(session_id: str) -> str | None:
    if len(session_id) > _MAX_ID_LENGTH:
        return None
    username, dot, secret = session_id.rpartition(".")
    return username if dot and secret and USERNAME.match(username) else None


def _epoch(raw: bytes | None) -> int:
    return 0 if raw is None else int(raw)


def _session_key(session_id: str) -> str:
    return "auth:session:" + hashlib.sha256(session_id.encode()).hexdigest()


def _epoch_key(username: str) -> str:
    return f"auth:epoch:{username}"

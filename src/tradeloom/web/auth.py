"""Who is calling, and may they: the FastAPI dependencies every API route builds on.

For route authors::

    from tradeloom.web.auth import AdminUser, CurrentUser, rate_limit

    @router.get("/api/positions")
    async def positions(user: Annotated[AuthenticatedUser, Depends(rate_limit("reads"))]): ...

    @router.post("/api/orders", status_code=202)
    async def place(body: PlaceOrderBody,
                    user: Annotated[AuthenticatedUser, Depends(rate_limit("orders"))]): ...

    @router.get("/api/me/thing")
    async def thing(user: CurrentUser): ...          # authenticated, not rate limited

* :data:`CurrentUser` authenticates the request or answers 401 ``not_authenticated``. An
  ``Authorization: Bearer`` header (an API token) wins; otherwise the session cookie. The
  result says which (``via``: ``"token"`` or ``"cookie"``).
* **CSRF is enforced here, so no route can forget it**: a POST/PUT/PATCH/DELETE authenticated
  by the session cookie must carry ``X-CSRF-Token`` equal to its session's token, else 403
  ``csrf_failed``. Bearer requests need none (a browser never adds that header on its own).
* :data:`AdminUser` is :data:`CurrentUser` with role ``admin``, else 403 ``forbidden``.
* ``rate_limit(kind)`` (``"orders"`` or ``"reads"``) is :data:`CurrentUser` plus one hit on the
  user's window of that kind: past the limit 429 ``rate_limited`` with ``Retry-After``.
* Once the caller is known, the request's log lines carry it as ``user_id`` (see
  :mod:`tradeloom.web.request_context`).
* Fail closed: a session store that cannot be reached answers 401 (the caller is logged out),
  a token store or rate-limit store that cannot be reached answers 503; nothing passes
  unchecked.

The services come from ``app.state.web`` (a :class:`WebServices`), set by ``install_api``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import structlog
from fastapi import Depends, Request

from tradeloom.accounts.repository import AccountRepository
from tradeloom.risk.limits import LimitsStore
from tradeloom.users.model import Role
from tradeloom.users.service import UserService
from tradeloom.users.sessions import Session, SessionStore, SessionStoreUnavailable
from tradeloom.users.tokens import ApiTokens
from tradeloom.web.errors import ApiError
from tradeloom.web.ratelimit import DEFAULT_RATE_LIMITS, RateLimiter, retry_after_seconds
from tradeloom.web.request_context import bind_request_user

log = structlog.get_logger("tradeloom.web")

SESSION_COOKIE = "tl_session"
CSRF_COOKIE = "tl_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class WebServices:
    """What the API routes use; built by the composition root."""

    users: UserService
    sessions: SessionStore
    tokens: ApiTokens
    rate_limiter: RateLimiter
    limits: LimitsStore
    accounts: AccountRepository


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    username: str
    role: Role
    via: Literal["cookie", "token"]
    session: Session | None = None  # when via the cookie
    token_id: str | None = None  # when via a token

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


async def web_services(request: Request) -> WebServices:
    services = getattr(request.app.state, "web", None)
    if not isinstance(services, WebServices):
        raise RuntimeError("the API is not installed: call install_api(app, services)")
    return services


Services = Annotated[WebServices, Depends(web_services)]


def not_authenticated(message: str, reason: str) -> ApiError:
    return ApiError(401, "not_authenticated", message, {"reason": reason}, _CHALLENGE)


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, None, {"Retry-After": "1"})


async def authenticate(request: Request, services: WebServices) -> AuthenticatedUser | None:
    """The caller, or None when the request carries no credentials at all; bad credentials
    raise 401 (and an unreachable token store 503). From here on the request's log lines
    carry the caller as ``user_id``."""
    user = await _identify(request, services)
    if user is not None:
        bind_request_user(request, user.username)
    return user


async def _identify(request: Request, services: WebServices) -> AuthenticatedUser | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        return await _by_token(authorization, services)
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id is None:
        return None
    try:
        session = await services.sessions.get(session_id)
    except SessionStoreUnavailable as exc:
        log.warning("web.session_store_unavailable", error=str(exc))
        raise not_authenticated(
            "sessions cannot be checked right now; log in again", "session_store_unavailable"
        ) from exc
    if session is None:
        raise not_authenticated("the session expired or ended; log in again", "session_expired")
    return AuthenticatedUser(session.username, session.role, "cookie", session=session)


async def _by_token(authorization: str, services: WebServices) -> AuthenticatedUser:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise not_authenticated("expected 'Authorization: Bearer <token>'", "malformed_token")
    try:
        found = await services.tokens.authenticate(token.strip())
    except Exception as exc:
        log.exception("web.token_store_unavailable")
        raise unavailable("API tokens cannot be checked right now; retry shortly") from exc
    if found is None:
        raise not_authenticated("the API token is not valid", "invalid_token")
    user, token_id = found
    return AuthenticatedUser(user.username, user.role, "token", token_id=token_id)


def check_csrf(request: Request, session: Session) -> None:
    """403 ``csrf_failed`` unless the request echoes the session's CSRF token."""
    given = request.headers.get(CSRF_HEADER, "")
    if not secrets.compare_digest(given.encode(), session.csrf_token.encode()):
        raise ApiError(
            403, "csrf_failed", f"a {request.method} with the session cookie needs {CSRF_HEADER}"
        )


async def current_user(request: Request, services: Services) -> AuthenticatedUser:
    user = await authenticate(request, services)
    if user is None:
        raise not_authenticated("log in, or send 'Authorization: Bearer <token>'", "missing")
    if user.session is not None and request.method not in SAFE_METHODS:
        check_csrf(request, user.session)
    return user


CurrentUser = Annotated[AuthenticatedUser, Depends(current_user)]


async def require_admin(user: CurrentUser) -> AuthenticatedUser:
    if not user.is_admin:
        raise ApiError(403, "forbidden", "only an administrator may do this")
    return user


AdminUser = Annotated[AuthenticatedUser, Depends(require_admin)]


def rate_limit(kind: str) -> Callable[..., Awaitable[AuthenticatedUser]]:
    """A dependency: the current user, after one hit on their ``kind`` window (429 past it)."""
    if kind not in DEFAULT_RATE_LIMITS:
        raise ValueError(f"no rate limit named {kind!r}; known: {sorted(DEFAULT_RATE_LIMITS)}")

    async def limited(user: CurrentUser, services: Services) -> AuthenticatedUser:
        await enforce_rate_limit(services.rate_limiter, kind, user.username)
        return user

    return limited


async def enforce_rate_limit(limiter: RateLimiter, kind: str, subject: str) -> None:
    """One hit of ``subject`` on the ``kind`` window: 429 past the limit, 503 if the cache
    cannot count."""
    try:
        decision = await limiter.hit(kind, subject)
    except Exception as exc:
        log.exception("web.rate_limit_unavailable", kind=kind)
        raise unavailable("rate limits cannot be checked right now; retry shortly") from exc
    if not decision.allowed:
        wait = retry_after_seconds(decision)
        raise ApiError(
            429,
            "rate_limited",
            f"too many {kind} requests; retry in {wait} s",
            {"kind": kind, "limit": limiter.limit(kind).limit, "retry_after": wait},
            {"Retry-After": str(wait)},
        )

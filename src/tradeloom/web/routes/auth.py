"""``/api/auth``: log in and out, who am I, and API tokens.

Login sets two cookies, both ``SameSite=Strict`` on ``/`` and ``Secure`` when the request came
over https: ``tl_session`` (HttpOnly: scripts never see the session id) and ``tl_csrf`` (the
CSRF token, readable by the page's script, which echoes it in ``X-CSRF-Token``; it is also in
the login answer and in ``/api/auth/me``). A new login always gets a new session id, and ends
the session the browser held before (no session fixation).

Tokens are created only from a logged-in session: a leaked token cannot mint more tokens that
would outlive its revocation.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import Field

from tradeloom.users.sessions import Session, SessionStoreUnavailable
from tradeloom.users.tokens import MAX_TOKEN_NAME, TokenInfo
from tradeloom.web.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    AuthenticatedUser,
    CurrentUser,
    Services,
    WebServices,
    authenticate,
    check_csrf,
    enforce_rate_limit,
    rate_limit,
    unavailable,
)
from tradeloom.web.errors import ApiError
from tradeloom.web.schemas import ApiModel

_NO_STORE = {"Cache-Control": "no-store"}
Reader = Annotated[AuthenticatedUser, Depends(rate_limit("reads"))]


class LoginRequest(ApiModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


# A token's name: at least one visible character and no control characters (NUL included).
_TOKEN_NAME = r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"


class TokenRequest(ApiModel):
    name: str = Field(min_length=1, max_length=MAX_TOKEN_NAME, pattern=_TOKEN_NAME)


TokenId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


def _set_session_cookies(request: Request, response: Response, session: Session) -> None:
    secure = request.url.scheme == "https"
    for name, value, http_only in (
        (SESSION_COOKIE, session.session_id, True),
        (CSRF_COOKIE, session.csrf_token, False),
    ):
        response.set_cookie(
            name, value, path="/", httponly=http_only, samesite="strict", secure=secure
        )


def _clear_session_cookies(request: Request, response: Response) -> None:
    secure = request.url.scheme == "https"
    for name, http_only in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", httponly=http_only, samesite="strict", secure=secure)


async def _end_previous_session(request: Request, services: WebServices) -> None:
    previous = request.cookies.get(SESSION_COOKIE)
    if previous is not None:
        await services.sessions.delete(previous)


def _token_json(info: TokenInfo) -> dict[str, str]:
    return {"token_id": info.token_id, "name": info.name, "created_at": info.created_at.isoformat()}


def auth_router() -> APIRouter:
    router = APIRouter(prefix="/api/auth", tags=["auth"])

    @router.post("/login")
    async def login(
        body: LoginRequest, request: Request, response: Response, services: Services
    ) -> dict[str, str]:
        """Check the password and open a session. A wrong password and an unknown username
        get the same 401 ``auth.invalid_credentials``; attempts are rate limited per client
        address and username (429)."""
        address = request.client.host if request.client else "unknown"
        attempt = f"{address}:{body.username.strip().lower()}"
        await enforce_rate_limit(services.rate_limiter, "login", attempt)
        user = await services.users.authenticate(body.username, body.password)
        try:
            await _end_previous_session(request, services)
            session = await services.sessions.create(user)
        except SessionStoreUnavailable as exc:
            raise unavailable("sessions cannot be opened right now; retry shortly") from exc
        _set_session_cookies(request, response, session)
        response.headers.update(_NO_STORE)
        return {
            "username": user.username,
            "role": user.role.value,
            "csrf_token": session.csrf_token,
        }

    @router.post("/logout", status_code=204)
    async def logout(request: Request, response: Response, services: Services) -> None:
        """End the cookie's session (this needs the CSRF header, as every cookie POST does)
        and clear the cookies. Without a live session there is nothing to end: 204 all the
        same."""
        try:
            user = await authenticate(request, services)
        except ApiError as error:
            if error.status != 401:
                raise
            user = None
        if user is not None and user.session is not None:
            check_csrf(request, user.session)
            try:
                await services.sessions.delete(user.session.session_id)
            except SessionStoreUnavailable as exc:
                raise unavailable("the session cannot be ended right now; retry") from exc
        _clear_session_cookies(request, response)

    @router.get("/me")
    async def me(user: Reader, services: Services) -> dict[str, Any]:
        accounts = await services.accounts.list_for_owner(user.username)
        found: dict[str, Any] = {
            "username": user.username,
            "role": user.role.value,
            "via": user.via,
            "accounts": [{"account_id": a.account_id, "currency": a.currency} for a in accounts],
        }
        if user.session is not None:
            found["csrf_token"] = user.session.csrf_token
        return found

    @router.post("/tokens", status_code=201)
    async def create_token(
        body: TokenRequest, user: CurrentUser, response: Response, services: Services
    ) -> dict[str, str]:
        """A new API token, shown in this answer only."""
        if user.via != "cookie":
            raise ApiError(403, "forbidden", "create API tokens from a logged-in session")
        issued = await services.tokens.issue(user.username, body.name.strip())
        response.headers.update(_NO_STORE)
        return {"token": issued.token, **_token_json(issued.info)}

    @router.get("/tokens")
    async def list_tokens(user: Reader, services: Services) -> dict[str, list[dict[str, str]]]:
        tokens = await services.tokens.list_for(user.username)
        return {"tokens": [_token_json(info) for info in tokens]}

    @router.delete("/tokens/{token_id}", status_code=204)
    async def revoke_token(token_id: TokenId, user: CurrentUser, services: Services) -> None:
        await services.tokens.revoke(user.username, token_id)

    return router

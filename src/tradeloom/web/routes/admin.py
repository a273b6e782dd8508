"""``/api/admin``: what an administrator does over HTTP (the CLI's ``users`` and ``accounts``
commands, for a running platform). Every route needs role ``admin`` (403 otherwise).

Limits and trading states live in the cache (``risk.limits``), where the risk engine reads
them on every order: a change applies to the next order in every process. Disabling a user
refuses their logins and tokens and ends their sessions at once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field, StrictBool, StrictInt

from tradeloom.domain.accounts import Account
from tradeloom.risk.limits import PLATFORM, TradingState
from tradeloom.users.model import Role, User
from tradeloom.users.service import DEFAULT_CURRENCY, DEFAULT_OPENING_CASH
from tradeloom.users.sessions import SessionStoreUnavailable
from tradeloom.web.auth import AdminUser, Services, unavailable
from tradeloom.web.errors import ApiError
from tradeloom.web.schemas import ApiModel, ExactDecimal


class CreateUserRequest(ApiModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    role: Role = Role.TRADER
    opening_cash: ExactDecimal = DEFAULT_OPENING_CASH
    currency: str = Field(default=DEFAULT_CURRENCY, max_length=3)
    account_id: str | None = Field(default=None, max_length=64)


class LimitsRequest(ApiModel):
    """Only the fields given change; ``reset`` first drops every override of the user."""

    max_order_notional: ExactDecimal | None = None
    max_open_orders: Annotated[StrictInt, Field(ge=0)] | None = None
    max_concentration: ExactDecimal | None = None
    order_rate: Annotated[StrictInt, Field(ge=1)] | None = None
    order_rate_window: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    reset: StrictBool = False


class TradingStateRequest(ApiModel):
    state: TradingState


class DisabledRequest(ApiModel):
    disabled: StrictBool


def _account_json(account: Account) -> dict[str, str]:
    return {
        "account_id": account.account_id,
        "currency": account.currency,
        "opening_cash": str(account.opening_cash),
    }


def _user_json(user: User, accounts: list[Account]) -> dict[str, Any]:
    return {
        "username": user.username,
        "role": user.role.value,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat(),
        "accounts": [_account_json(account) for account in accounts],
    }


def admin_router() -> APIRouter:
    router = APIRouter(prefix="/api/admin", tags=["admin"])

    @router.post("/users", status_code=201)
    async def create_user(
        body: CreateUserRequest, _: AdminUser, services: Services
    ) -> dict[str, Any]:
        """Create a user and their default trading account (409 if the username is taken)."""
        registration = await services.users.register(
            body.username,
            body.password,
            role=body.role,
            opening_cash=body.opening_cash,
            currency=body.currency,
            account_id=body.account_id,
        )
        return _user_json(registration.user, [registration.account])

    @router.get("/users")
    async def list_users(_: AdminUser, services: Services) -> dict[str, list[dict[str, Any]]]:
        owned: dict[str, list[Account]] = defaultdict(list)
        for account in await services.accounts.list_accounts():
            owned[account.owner].append(account)
        users = await services.users.list_users()
        return {"users": [_user_json(user, owned[user.username]) for user in users]}

    @router.get("/users/{username}/limits")
    async def user_limits(username: str, _: AdminUser, services: Services) -> dict[str, Any]:
        user = await services.users.get(username)
        limits = await services.limits.limits_for(user.username)
        return {"username": user.username, "limits": services.limits.describe(limits)}

    @router.put("/users/{username}/limits")
    async def set_user_limits(
        username: str, body: LimitsRequest, _: AdminUser, services: Services
    ) -> dict[str, Any]:
        """Set some limits (and/or ``reset`` to the defaults); answers the effective limits."""
        user = await services.users.get(username)
        changes = body.model_dump(exclude_none=True, exclude={"reset"})
        if body.reset:
            await services.limits.reset_limits(user.username)
        if changes:
            limits = await services.limits.set_limits(user.username, **changes)
        else:
            limits = await services.limits.limits_for(user.username)
        return {"username": user.username, "limits": services.limits.describe(limits)}

    @router.put("/users/{username}/trading-state")
    async def set_user_trading_state(
        username: str, body: TradingStateRequest, _: AdminUser, services: Services
    ) -> dict[str, str]:
        """The user's own state, and the effective one (the stricter of it and the platform's)."""
        user = await services.users.get(username)
        await services.limits.set_trading_state(user.username, body.state)
        effective = (await services.limits.settings_for(user.username)).state
        return {"username": user.username, "state": body.state.value, "effective": effective}

    @router.put("/platform/trading-state")
    async def set_platform_trading_state(
        body: TradingStateRequest, _: AdminUser, services: Services
    ) -> dict[str, str]:
        """The platform kill switch: ``halted`` refuses every order of everyone."""
        await services.limits.set_trading_state(PLATFORM, body.state)
        return {"state": (await services.limits.trading_state(PLATFORM)).value}

    @router.put("/users/{username}/disabled")
    async def set_user_disabled(
        username: str, body: DisabledRequest, admin: AdminUser, services: Services
    ) -> dict[str, Any]:
        """Disable (or enable) a user; disabling ends their sessions everywhere at once."""
        user = await services.users.get(username)
        if body.disabled and user.username == admin.username:
            raise ApiError(409, "conflict", "an administrator cannot disable themselves")
        user = await services.users.set_disabled(user.username, body.disabled)
        if body.disabled:
            try:
                await services.sessions.end_all(user.username)
            except SessionStoreUnavailable as exc:
                raise unavailable(
                    f"{user.username} is disabled but their sessions could not be ended; retry"
                ) from exc
        accounts = await services.accounts.list_for_owner(user.username)
        return _user_json(user, accounts)

    return router

"""``/api/positions`` and ``/api/account``: the caller's positions, P&L, cash and equity.

Read from the positions projection (eventually consistent with fills; ``position.updated`` on
the stream says when a row changed) and valued at the last price: an open position without a
fresh price has ``null`` market value and unrealized P&L, and so does the account's equity,
rather than a value computed from a stale or missing price.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from tradeloom.positions.queries import AccountSummary, PositionQueries, PositionView
from tradeloom.web.auth import AuthenticatedUser, rate_limit
from tradeloom.web.json import json_object
from tradeloom.web.trading import Trading

Reader = Annotated[AuthenticatedUser, Depends(rate_limit("reads"))]
AccountParam = Annotated[str | None, Query(min_length=1, max_length=64)]


def position_json(view: PositionView) -> dict[str, Any]:
    return {
        "account_id": view.account_id,
        "symbol": view.symbol,
        "qty": view.quantity,
        "average_cost": view.average_cost,
        "cost_basis": view.cost_basis,
        "realized_pnl": view.realized_pnl,
        "fees": view.fees,
        "last_price": view.mark,
        "market_value": view.market_value,
        "unrealized_pnl": view.unrealized_pnl,
        "fill_count": view.fill_count,
        "updated_at": view.updated_at,
    }


def account_json(summary: AccountSummary) -> dict[str, Any]:
    return {
        "account_id": summary.account_id,
        "currency": summary.currency,
        "opening_cash": summary.opening_cash,
        "cash": summary.cash,
        "realized_pnl": summary.realized_pnl,
        "fees": summary.fees,
        "open_positions": summary.open_positions,
        "market_value": summary.market_value,
        "unrealized_pnl": summary.unrealized_pnl,
        "equity": summary.equity,
    }


async def position_queries(request: Request) -> PositionQueries:
    queries = getattr(request.app.state, "positions", None)
    if not isinstance(queries, PositionQueries):
        raise RuntimeError("the positions API is not installed")
    return queries


Positions = Annotated[PositionQueries, Depends(position_queries)]


def portfolio_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["positions"])

    @router.get("/positions")
    async def list_positions(
        user: Reader, trading: Trading, positions: Positions, account_id: AccountParam = None
    ) -> dict[str, Any]:
        """Your positions (of one account when given), flat ones included, with live P&L."""
        account = await trading.account_for(user.username, account_id)
        views = await positions.positions(user.username, account)
        return json_object({"positions": [position_json(view) for view in views]})

    @router.get("/account")
    async def account_summary(
        user: Reader, trading: Trading, positions: Positions, account_id: AccountParam = None
    ) -> dict[str, Any]:
        """Cash, realized and unrealized P&L, and equity of your account (your first one
        unless ``account_id`` names another of yours)."""
        account = await trading.account_for(user.username, account_id)
        return json_object(account_json(await positions.account_summary(user.username, account)))

    return router

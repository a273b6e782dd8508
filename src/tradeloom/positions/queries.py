"""The positions read side: a user's positions and account summaries, valued at last prices.

Reads come from the ``positions`` and ``accounts`` tables the projection keeps (never from the
stream), scoped to one **owner**: a user asking for an account that is not theirs gets what an
unknown account gets (nothing, or :class:`AccountNotFound`), so not even its existence leaks.

Open positions are valued at the **mark**: the mid of bid and ask when both are quoted, else
the last trade (:func:`tradeloom.domain.positions.mark_price`). The last-price source answers
None for a symbol without a fresh price (the cache drops prices older than its TTL); then
market value and unrealized P&L are None, never a stale or zero value, and so are an
account's unrealized P&L, market value and equity when any of its open positions has no mark.
A flat position is worth exactly 0 at any price and needs none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from sqlalchemy import bindparam, select

from tradeloom.domain.errors import DomainError
from tradeloom.domain.numbers import ZERO
from tradeloom.domain.positions import exact_sum, mark_price, market_value, unrealized_pnl
from tradeloom.positions.repository import PositionRow, position_row
from tradeloom.storage.database import Database
from tradeloom.storage.schema import accounts, positions


class AccountNotFound(DomainError):
    """No account of this id belongs to the user (whether or not it exists)."""

    code = "account.not_found"


class Quote(Protocol):
    """What valuation reads of a price update (``PriceUpdate`` has these)."""

    @property
    def bid(self) -> Decimal | None: ...

    @property
    def ask(self) -> Decimal | None: ...

    @property
    def last(self) -> Decimal | None: ...


class LastPriceSource(Protocol):
    """Fresh last prices by symbol, None where there is none (``LastPrices`` is one)."""

    async def last_many(self, symbols: Sequence[str]) -> Mapping[str, Quote | None]: ...


@dataclass(frozen=True, slots=True)
class PositionView:
    """One position as a user sees it. ``mark``, ``market_value`` and ``unrealized_pnl`` are
    None for an open position without a fresh price."""

    account_id: str
    symbol: str
    quantity: Decimal
    average_cost: Decimal | None
    cost_basis: Decimal
    realized_pnl: Decimal
    fees: Decimal
    fill_count: int
    last_filled_at: datetime
    updated_at: datetime
    mark: Decimal | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """An account's money. ``realized_pnl`` and ``fees`` add up every position's;
    ``unrealized_pnl``, ``market_value`` and ``equity`` (cash plus market value) are None
    when an open position has no fresh price."""

    account_id: str
    currency: str
    opening_cash: Decimal
    cash: Decimal
    realized_pnl: Decimal
    fees: Decimal
    open_positions: int
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    equity: Decimal | None


def _view(row: PositionRow, mark: Decimal | None) -> PositionView:
    p = row.position
    if p.is_flat:
        mark_value: Decimal | None = ZERO
        unrealized: Decimal | None = ZERO
    elif mark is None:
        mark_value = unrealized = None
    else:
        mark_value, unrealized = market_value(p, mark), unrealized_pnl(p, mark)
    return PositionView(
        account_id=p.account_id,
        symbol=p.symbol,
        quantity=p.quantity,
        average_cost=p.average_cost,
        cost_basis=p.cost_basis,
        realized_pnl=p.realized_pnl,
        fees=p.fees,
        fill_count=row.fill_count,
        last_filled_at=row.last_filled_at,
        updated_at=row.updated_at,
        mark=mark,
        market_value=mark_value,
        unrealized_pnl=unrealized,
    )


def _total(amounts: Iterable[Decimal | None]) -> Decimal | None:
    """The exact sum, or None if any amount is unknown."""
    known = list(amounts)
    if any(amount is None for amount in known):
        return None
    return exact_sum(amount for amount in known if amount is not None)


# Built once with bound parameters and reused (building a select and deriving its cache key
# costs more than PostgreSQL's part of a query this small).
_OWNED_POSITIONS = (
    select(positions)
    .join(accounts, accounts.c.account_id == positions.c.account_id)
    .where(accounts.c.owner == bindparam("owner"))
    .order_by(positions.c.account_id, positions.c.symbol)
)
_ACCOUNT_POSITIONS = _OWNED_POSITIONS.where(positions.c.account_id == bindparam("account_id"))
_OWNED_ACCOUNT = select(accounts).where(
    accounts.c.account_id == bindparam("account_id"), accounts.c.owner == bindparam("owner")
)


class PositionQueries:
    """Answers position and account questions for one user at a time. Reads only."""

    def __init__(self, database: Database, last_prices: LastPriceSource | None) -> None:
        self._database = database
        self._last_prices = last_prices

    async def positions(self, owner: str, account_id: str | None = None) -> list[PositionView]:
        """The owner's positions (of one account when given; flat ones too), by account and
        symbol. Another user's account gives an empty list."""
        query = _OWNED_POSITIONS if account_id is None else _ACCOUNT_POSITIONS
        values = {"owner": owner, "account_id": account_id}
        async with self._database.connect() as conn:
            rows = [position_row(row) for row in await conn.execute(query, values)]
        return await self._valued(rows)

    async def account_summary(
        self, owner: str, account_id: str, views: list[PositionView] | None = None
    ) -> AccountSummary:
        """The owner's account's cash, P&L and equity; :class:`AccountNotFound` if the owner
        has no such account. ``views``: the account's positions when the caller just read
        them (a snapshot shows both), so they are not read and valued twice."""
        values = {"owner": owner, "account_id": account_id}
        async with self._database.connect() as conn:
            account = (await conn.execute(_OWNED_ACCOUNT, values)).first()
        if account is None:
            raise AccountNotFound(f"no account {account_id!r} of {owner!r}")
        if views is None:
            views = await self.positions(owner, account_id)
        opened = [view for view in views if view.quantity != ZERO]
        value = _total(view.market_value for view in opened)
        a = account._mapping
        return AccountSummary(
            account_id=account_id,
            currency=a["currency"],
            opening_cash=a["opening_cash"],
            cash=a["cash"],
            realized_pnl=exact_sum(view.realized_pnl for view in views),
            fees=exact_sum(view.fees for view in views),
            open_positions=len(opened),
            market_value=value,
            unrealized_pnl=_total(view.unrealized_pnl for view in opened),
            equity=None if value is None else exact_sum([value], a["cash"]),
        )

    async def _valued(self, rows: list[PositionRow]) -> list[PositionView]:
        marks = await self._marks(sorted({r.position.symbol for r in rows if r.position.quantity}))
        return [_view(row, marks.get(row.position.symbol)) for row in rows]

    async def _marks(self, symbols: list[str]) -> dict[str, Decimal | None]:
        if not symbols or self._last_prices is None:
            return {}
        quotes = await self._last_prices.last_many(symbols)
        return {
            symbol: None if quote is None else mark_price(quote.bid, quote.ask, quote.last)
            for symbol, quote in quotes.items()
        }

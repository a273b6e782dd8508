"""Accounts in the database.

Guarantees: an account id is taken once (a second ``create`` with the same id raises
:class:`~tradeloom.domain.accounts.DuplicateAccount` and changes nothing, on SQLite and
PostgreSQL alike, even when two creates race: the primary key decides); amounts round-trip
exactly; ``created_at`` is UTC from the injected clock.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from tradeloom.domain.accounts import Account, DuplicateAccount
from tradeloom.domain.numbers import exact
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.storage.database import Database
from tradeloom.storage.schema import accounts


def _account(row: Any) -> Account:
    mapping = row._mapping
    return Account(
        account_id=mapping["account_id"],
        owner=mapping["owner"],
        currency=mapping["currency"],
        opening_cash=mapping["opening_cash"],
        cash=mapping["cash"],
        created_at=mapping["created_at"],
    )


# Built once with bound parameters and reused: the risk engine and the web tier look accounts
# up on every first order and every stream, and building a select costs more than running it.
_BY_ID = select(accounts).where(accounts.c.account_id == bindparam("account_id"))
_ALL = select(accounts).order_by(accounts.c.created_at, accounts.c.account_id)
_OWNED = _ALL.where(accounts.c.owner == bindparam("owner"))


class AccountRepository:
    """Creates and reads accounts. Reads never lock; ``create`` is one write transaction."""

    def __init__(self, database: Database, clock: Clock | None = None) -> None:
        self._database = database
        self._clock = clock or SystemClock()

    async def create(
        self, account_id: str, owner: str, opening_cash: Decimal | int | str, currency: str = "USD"
    ) -> Account:
        """Open an account whose cash starts at ``opening_cash``; raise ``DuplicateAccount``
        if the id is taken, ``InvalidAccount`` if a term is malformed (nothing is written)."""
        opening = exact(opening_cash, field="opening_cash")
        account = Account(
            account_id=account_id,
            owner=owner,
            currency=currency,
            opening_cash=opening,
            cash=opening,
            created_at=self._clock.now(),
        )
        row = {
            "account_id": account.account_id,
            "owner": account.owner,
            "currency": account.currency,
            "opening_cash": account.opening_cash,
            "cash": account.cash,
            "created_at": account.created_at,
        }
        try:
            async with self._database.transaction() as conn:
                await conn.execute(insert(accounts), [row])
        except IntegrityError:
            raise DuplicateAccount(f"account {account_id!r} exists already") from None
        return account

    async def get(self, account_id: str) -> Account | None:
        async with self._database.connect() as conn:
            row = (await conn.execute(_BY_ID, {"account_id": account_id})).first()
        return None if row is None else _account(row)

    async def list_for_owner(self, owner: str) -> list[Account]:
        """The owner's accounts, oldest first (ties by id)."""
        return await self.list_accounts(owner)

    async def list_accounts(self, owner: str | None = None) -> list[Account]:
        """Every account (of ``owner`` when given), oldest first (ties by id)."""
        query = _ALL if owner is None else _OWNED
        async with self._database.connect() as conn:
            return [_account(row) for row in await conn.execute(query, {"owner": owner})]


async def create_account(
    database: Database,
    account_id: str,
    owner: str,
    opening_cash: Decimal | int | str,
    currency: str = "USD",
    *,
    clock: Clock | None = None,
) -> Account:
    """What ``tradeloom accounts create`` runs: one account on a migrated ``database``."""
    return await AccountRepository(database, clock).create(
        account_id, owner, opening_cash, currency
    )

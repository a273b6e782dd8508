"""The positions tables: one row per (account, symbol), the fills applied, accounts' cash.

Every function works inside the caller's connection (and so its transaction): the projection
writes fills, positions and cash in one transaction per batch. Locking reads
(``for_update``) take rows in (account, symbol) order, positions before accounts, so two
transactions that overlap (a redelivery to a second consumer) queue instead of deadlocking.
``position_fills`` is keyed by fill id: inserting a fill twice keeps the first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import String, any_, bindparam, insert, select, text, tuple_, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.orders import Side
from tradeloom.domain.positions import Fill, Position
from tradeloom.storage.schema import accounts, position_fills, positions

PositionKey = tuple[str, str]
"""(account id, symbol)."""

_INSERT_CHUNK = 500  # rows per INSERT: far below either dialect's limit on bound parameters


@dataclass(frozen=True, slots=True)
class PositionRow:
    """A stored position with its bookkeeping: how many fills made it and the newest one in
    canonical order (``last_key``)."""

    position: Position
    fill_count: int
    last_filled_at: datetime
    last_fill_id: str
    updated_at: datetime

    @property
    def key(self) -> PositionKey:
        return (self.position.account_id, self.position.symbol)

    @property
    def last_key(self) -> tuple[datetime, str]:
        return (self.last_filled_at, self.last_fill_id)


@dataclass(frozen=True, slots=True)
class ReceivedFill:
    """A fill and the id of the event that brought it."""

    fill: Fill
    event_id: str


def _fill(row: Any) -> Fill:
    m = row._mapping
    return Fill(
        fill_id=m["fill_id"],
        account_id=m["account_id"],
        symbol=m["symbol"],
        side=Side(m["side"]),
        quantity=m["quantity"],
        price=m["price"],
        fee=m["fee"],
        filled_at=m["filled_at"],
        order_id=m["order_id"],
    )


def _fill_values(received: ReceivedFill, applied_at: datetime) -> dict[str, Any]:
    fill = received.fill
    return {
        "fill_id": fill.fill_id,
        "account_id": fill.account_id,
        "symbol": fill.symbol,
        "order_id": fill.order_id,
        "event_id": received.event_id,
        "side": fill.side.value,
        "quantity": fill.quantity,
        "price": fill.price,
        "fee": fill.fee,
        "filled_at": fill.filled_at,
        "applied_at": applied_at,
    }


# PostgreSQL: one statement text whatever the batch size, with the rows as arrays, so the
# statement is prepared once per connection rather than once per batch size (a multi-row
# VALUES list changes the text with every size; measured: 10 % of the projection's time was
# preparing statements).
_INSERT_FILLS_PG = text(
    "INSERT INTO position_fills (fill_id, account_id, symbol, order_id, event_id, side,"
    " quantity, price, fee, filled_at, applied_at)"
    " SELECT f.*, CAST(:applied_at AS timestamptz) FROM unnest("
    "CAST(:fill_id AS varchar[]), CAST(:account_id AS varchar[]), CAST(:symbol AS varchar[]),"
    " CAST(:order_id AS varchar[]), CAST(:event_id AS varchar[]), CAST(:side AS varchar[]),"
    " CAST(:quantity AS numeric[]), CAST(:price AS numeric[]), CAST(:fee AS numeric[]),"
    " CAST(:filled_at AS timestamptz[])) AS f"
    " ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id"
)


async def insert_fills(
    conn: AsyncConnection, received: Sequence[ReceivedFill], applied_at: datetime
) -> set[str]:
    """Insert fills of distinct ids unless already stored; return the ids inserted. A racing
    twin on PostgreSQL is waited for, then skipped (``ON CONFLICT DO NOTHING``)."""
    if not received:
        return set()
    if conn.dialect.name == "postgresql":
        # By fill id: two overlapping batches insert in one order and never deadlock.
        ordered = sorted(received, key=lambda r: r.fill.fill_id)
        rows = [_fill_values(r, applied_at) for r in ordered]
        columns = {name: [row[name] for row in rows] for name in _ARRAY_COLUMNS}
        result = await conn.execute(_INSERT_FILLS_PG, {**columns, "applied_at": applied_at})
        return set(result.scalars())
    inserted: set[str] = set()
    for start in range(0, len(received), _INSERT_CHUNK):
        rows = [_fill_values(r, applied_at) for r in received[start : start + _INSERT_CHUNK]]
        statement = (
            sqlite.insert(position_fills)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["fill_id"])
            .returning(position_fills.c.fill_id)
        )
        inserted.update((await conn.execute(statement)).scalars())
    return inserted


_ARRAY_COLUMNS = (
    "fill_id",
    "account_id",
    "symbol",
    "order_id",
    "event_id",
    "side",
    "quantity",
    "price",
    "fee",
    "filled_at",
)


async def load_fills(conn: AsyncConnection, fill_ids: Iterable[str]) -> dict[str, Fill]:
    """The stored fills among ``fill_ids``, by id."""
    wanted = sorted(set(fill_ids))
    if not wanted:
        return {}
    rows = await conn.execute(select(position_fills).where(position_fills.c.fill_id.in_(wanted)))
    return {fill.fill_id: fill for fill in map(_fill, rows)}


async def load_position_fills(conn: AsyncConnection, key: PositionKey) -> list[Fill]:
    """Every stored fill of one position (in no particular order: the caller sorts)."""
    account_id, symbol = key
    query = select(position_fills).where(
        position_fills.c.account_id == account_id, position_fills.c.symbol == symbol
    )
    return [_fill(row) for row in await conn.execute(query)]


def position_row(row: Any) -> PositionRow:
    """A ``positions`` row as a :class:`PositionRow`."""
    m = row._mapping
    return PositionRow(
        position=Position(
            account_id=m["account_id"],
            symbol=m["symbol"],
            quantity=m["quantity"],
            cost_basis=m["cost_basis"],
            realized_pnl=m["realized_pnl"],
            fees=m["fees"],
        ),
        fill_count=m["fill_count"],
        last_filled_at=m["last_filled_at"],
        last_fill_id=m["last_fill_id"],
        updated_at=m["updated_at"],
    )


async def load_positions(
    conn: AsyncConnection, account_ids: Iterable[str]
) -> dict[PositionKey, PositionRow]:
    """Every stored position of ``account_ids``, by key (reading, not locking)."""
    wanted = sorted(set(account_ids))
    if not wanted:
        return {}
    query = (
        select(positions)
        .where(positions.c.account_id.in_(wanted))
        .order_by(positions.c.account_id, positions.c.symbol)
    )
    rows = [position_row(row) for row in await conn.execute(query)]
    return {row.key: row for row in rows}


async def lock_positions_of(
    conn: AsyncConnection, keys: Collection[PositionKey]
) -> dict[PositionKey, PositionRow]:
    """The stored positions among ``keys``, locked in key order to the end of the
    transaction (PostgreSQL; SQLite has one writer)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    if conn.dialect.name == "postgresql":
        params = {"accounts": [k[0] for k in wanted], "symbols": [k[1] for k in wanted]}
        rows = await conn.execute(_LOCK_POSITIONS_OF_KEYS_PG, params)
    else:
        rows = await conn.execute(
            select(positions)
            .where(tuple_(positions.c.account_id, positions.c.symbol).in_(wanted))
            .order_by(positions.c.account_id, positions.c.symbol)
        )
    return {row.key: row for row in map(position_row, rows)}


# Columns named, not ``p.*``: ``.columns()`` types the result by position, and a column a
# later migration appends would otherwise shift numeric values into the wrong fields.
_POSITION_COLUMNS = ", ".join(f"p.{column.name}" for column in positions.c)
_LOCK_POSITIONS_OF_KEYS_PG = text(
    f"SELECT {_POSITION_COLUMNS} FROM positions AS p JOIN unnest(CAST(:accounts AS varchar[]),"
    " CAST(:symbols AS varchar[])) AS k(account_id, symbol)"
    " ON p.account_id = k.account_id AND p.symbol = k.symbol"
    " ORDER BY p.account_id, p.symbol FOR UPDATE OF p"
).columns(*positions.c)


_POSITION_STATE = (
    "quantity",
    "cost_basis",
    "realized_pnl",
    "fees",
    "fill_count",
    "last_filled_at",
    "last_fill_id",
    "updated_at",
)


def _position_values(row: PositionRow) -> dict[str, Any]:
    p = row.position
    return {
        "quantity": p.quantity,
        "cost_basis": p.cost_basis,
        "realized_pnl": p.realized_pnl,
        "fees": p.fees,
        "fill_count": row.fill_count,
        "last_filled_at": row.last_filled_at,
        "last_fill_id": row.last_fill_id,
        "updated_at": row.updated_at,
    }


_UPDATE_POSITION = (
    update(positions)
    .where(
        positions.c.account_id == bindparam("key_account_id"),
        positions.c.symbol == bindparam("key_symbol"),
    )
    .values({name: bindparam(name) for name in _POSITION_STATE})
)


# PostgreSQL: every row of a batch in one upsert of one text (executemany sends a message per
# row); rows are one per key, so no row is touched twice.
_SAVE_POSITIONS_PG = text(
    "INSERT INTO positions (account_id, symbol, quantity, cost_basis, realized_pnl, fees,"
    " fill_count, last_filled_at, last_fill_id, updated_at) SELECT * FROM unnest("
    "CAST(:account_id AS varchar[]), CAST(:symbol AS varchar[]), CAST(:quantity AS numeric[]),"
    " CAST(:cost_basis AS numeric[]), CAST(:realized_pnl AS numeric[]),"
    " CAST(:fees AS numeric[]), CAST(:fill_count AS integer[]),"
    " CAST(:last_filled_at AS timestamptz[]), CAST(:last_fill_id AS varchar[]),"
    " CAST(:updated_at AS timestamptz[]))"
    " ON CONFLICT (account_id, symbol) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _POSITION_STATE)
)
_SAVE_CASH_PG = text(
    "UPDATE accounts SET cash = v.cash FROM unnest(CAST(:account_id AS varchar[]),"
    " CAST(:cash AS numeric[])) AS v(account_id, cash) WHERE accounts.account_id = v.account_id"
)


async def save_positions(
    conn: AsyncConnection, rows: Iterable[PositionRow], existing: Collection[PositionKey]
) -> None:
    """Write ``rows``: an update of those in ``existing``, an insert of the rest (on
    PostgreSQL one upsert for all of them)."""
    if conn.dialect.name == "postgresql":
        keyed = [{"account_id": r.key[0], "symbol": r.key[1], **_position_values(r)} for r in rows]
        if keyed:
            arrays = {name: [v[name] for v in keyed] for name in keyed[0]}
            await conn.execute(_SAVE_POSITIONS_PG, arrays)
        return
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    for row in rows:
        values = _position_values(row)
        account_id, symbol = row.key
        if row.key in existing:
            updates.append({"key_account_id": account_id, "key_symbol": symbol, **values})
        else:
            inserts.append({"account_id": account_id, "symbol": symbol, **values})
    if updates:
        await conn.execute(_UPDATE_POSITION, updates)
    if inserts:
        await conn.execute(insert(positions), inserts)


async def load_cash(
    conn: AsyncConnection, account_ids: Iterable[str], *, for_update: bool = False
) -> dict[str, Decimal]:
    """The cash of each existing account among ``account_ids``; locked when ``for_update``."""
    wanted = sorted(set(account_ids))
    if not wanted:
        return {}
    if conn.dialect.name == "postgresql":  # one statement text for any number of accounts
        matches = accounts.c.account_id == any_(bindparam("ids", wanted, type_=ARRAY(String())))
    else:
        matches = accounts.c.account_id.in_(wanted)
    query = (
        select(accounts.c.account_id, accounts.c.cash)
        .where(matches)
        .order_by(accounts.c.account_id)
    )
    if for_update:
        query = query.with_for_update()
    return {account_id: cash for account_id, cash in (await conn.execute(query)).all()}


_UPDATE_CASH = (
    update(accounts)
    .where(accounts.c.account_id == bindparam("key_account_id"))
    .values(cash=bindparam("cash"))
)


async def save_cash(conn: AsyncConnection, cash: Mapping[str, Decimal]) -> None:
    """Set each account's cash, in one batched update (one statement on PostgreSQL)."""
    if cash and conn.dialect.name == "postgresql":
        await conn.execute(_SAVE_CASH_PG, {"account_id": list(cash), "cash": list(cash.values())})
    elif cash:
        await conn.execute(
            _UPDATE_CASH,
            [{"key_account_id": account_id, "cash": amount} for account_id, amount in cash.items()],
        )

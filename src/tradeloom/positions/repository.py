"""The positions tables: one row per (account, symbol), the fills applied, accounts' cash.

Every function works inside the caller's connection (and so its transaction): the projection
writes fills, positions and cash in one transaction per batch, in two statements on
PostgreSQL: :func:`record_fills` locks the batch's positions and inserts its fills,
:func:`save_positions_and_cash` upserts the positions and moves the cash. Rows are locked in
one order by every writer: positions in (account, symbol) order, then the fills in fill-id
order, then accounts in id order, so two transactions that overlap (a redelivery to a second
consumer) queue instead of deadlocking. ``position_fills`` is keyed by fill id: inserting a
fill twice keeps the first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, insert, select, text, tuple_, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.orders import Side
from tradeloom.domain.positions import Fill, Position, exact_sum
from tradeloom.storage.database import INSERT_CHUNK
from tradeloom.storage.schema import accounts, position_fills, positions
from tradeloom.storage.statements import ByDialect

PositionKey = tuple[str, str]
"""(account id, symbol)."""


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
# preparing statements). The insert's rows wait for the count over ``locked``, so every
# position is locked (in key order) before any fill is inserted (in fill-id order).
_RECORD_FILLS_PG = text(
    "WITH locked AS (SELECT p.* FROM positions AS p"
    " JOIN unnest(CAST(:key_account AS varchar[]), CAST(:key_symbol AS varchar[]))"
    " AS k(account_id, symbol) ON p.account_id = k.account_id AND p.symbol = k.symbol"
    " ORDER BY p.account_id, p.symbol FOR UPDATE OF p),"
    " new AS (INSERT INTO position_fills (fill_id, account_id, symbol, order_id, event_id,"
    " side, quantity, price, fee, filled_at, applied_at)"
    " SELECT f.*, CAST(:applied_at AS timestamptz) FROM unnest("
    "CAST(:fill_id AS varchar[]), CAST(:account_id AS varchar[]), CAST(:symbol AS varchar[]),"
    " CAST(:order_id AS varchar[]), CAST(:event_id AS varchar[]), CAST(:side AS varchar[]),"
    " CAST(:quantity AS numeric[]), CAST(:price AS numeric[]), CAST(:fee AS numeric[]),"
    " CAST(:filled_at AS timestamptz[])) AS f WHERE (SELECT count(*) FROM locked) >= 0"
    " ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id)"
    f" SELECT NULL AS fill_id, {', '.join(f'l.{c.name}' for c in positions.c)} FROM locked AS l"
    f" UNION ALL SELECT n.fill_id, {', '.join('NULL' for _ in positions.c)} FROM new AS n"
)


@dataclass(frozen=True, slots=True)
class RecordedFills:
    """What :func:`record_fills` did: the ids of the fills it inserted (the others were
    stored already), and the stored positions of the batch, locked."""

    inserted: set[str]
    positions: dict[PositionKey, PositionRow]


async def record_fills(
    conn: AsyncConnection, received: Sequence[ReceivedFill], applied_at: datetime
) -> RecordedFills:
    """Lock the stored positions of ``received``'s (account, symbol) pairs, then insert the
    fills (of distinct ids) not stored yet. A racing twin on PostgreSQL is waited for, then
    skipped (``ON CONFLICT DO NOTHING``).

    On PostgreSQL both happen in one statement, so its snapshot is taken before any wait: a
    locked row is read as last committed, but a position another transaction created after
    the statement began is not seen. That transaction would have stored some of these fills
    too (the bus hands an account's fills to one consumer at a time, so only a redelivered
    batch overlaps), so when some fills were stored already, read the positions found absent
    again (:func:`lock_positions_of`) before folding from flat."""
    if not received:
        return RecordedFills(set(), {})
    keys = sorted({(r.fill.account_id, r.fill.symbol) for r in received})
    if conn.dialect.name == "postgresql":
        # By fill id: two overlapping batches insert in one order and never deadlock.
        ordered = sorted(received, key=lambda r: r.fill.fill_id)
        rows = [_fill_values(r, applied_at) for r in ordered]
        columns = {name: [row[name] for row in rows] for name in _ARRAY_COLUMNS}
        params = {
            **columns,
            "applied_at": applied_at,
            "key_account": [key[0] for key in keys],
            "key_symbol": [key[1] for key in keys],
        }
        recorded = RecordedFills(set(), {})
        for row in await conn.execute(_RECORD_FILLS_PG, params):
            if row.fill_id is not None:
                recorded.inserted.add(row.fill_id)
            else:
                stored = position_row(row)
                recorded.positions[stored.key] = stored
        return recorded
    inserted: set[str] = set()
    for start in range(0, len(received), INSERT_CHUNK):
        rows = [_fill_values(r, applied_at) for r in received[start : start + INSERT_CHUNK]]
        inserted.update((await conn.execute(_RECORD_FILLS_SQLITE, rows)).scalars())
    return RecordedFills(inserted, await lock_positions_of(conn, keys))


# SQLite: a chunk's rows go as the parameters of this one statement, which SQLAlchemy sends as
# one multi-row INSERT ("insertmanyvalues"): the statement a VALUES list built per chunk was,
# without building it (~40 us a row here).
_RECORD_FILLS_SQLITE = (
    sqlite.insert(position_fills)
    .on_conflict_do_nothing(index_elements=["fill_id"])
    .returning(position_fills.c.fill_id)
)


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


# The statements below are built once with bound parameters and reused: building one and
# deriving its cache key costs more here than PostgreSQL's part of running it (see
# tradeloom.storage.statements). On PostgreSQL a list of keys is one array: one statement
# text for any number of keys.
_FILLS_BY_ID = ByDialect(
    lambda among: select(position_fills).where(among(position_fills.c.fill_id, "fill_ids"))
)
_FILLS_OF_KEYS_SQLITE = select(position_fills).where(
    tuple_(position_fills.c.account_id, position_fills.c.symbol).in_(
        bindparam("keys", expanding=True)
    )
)
_POSITIONS_OF_KEYS_SQLITE = (
    select(positions)
    .where(
        tuple_(positions.c.account_id, positions.c.symbol).in_(bindparam("keys", expanding=True))
    )
    .order_by(positions.c.account_id, positions.c.symbol)
)
_INSERT_POSITIONS = insert(positions)
_CASH_OF_SQLITE = select(accounts.c.account_id, accounts.c.cash).where(
    accounts.c.account_id.in_(bindparam("account_ids", expanding=True))
)


async def load_fills(conn: AsyncConnection, fill_ids: Iterable[str]) -> dict[str, Fill]:
    """The stored fills among ``fill_ids``, by id."""
    wanted = sorted(set(fill_ids))
    if not wanted:
        return {}
    rows = await conn.execute(_FILLS_BY_ID(conn), {"fill_ids": wanted})
    return {fill.fill_id: fill for fill in map(_fill, rows)}


async def load_position_fills(
    conn: AsyncConnection, keys: Collection[PositionKey]
) -> dict[PositionKey, list[Fill]]:
    """Every stored fill of each position (in no particular order: the caller sorts)."""
    wanted = sorted(set(keys))
    fills: dict[PositionKey, list[Fill]] = {key: [] for key in wanted}
    if not wanted:
        return fills
    if conn.dialect.name == "postgresql":
        params = {"accounts": [k[0] for k in wanted], "symbols": [k[1] for k in wanted]}
        rows = await conn.execute(_FILLS_OF_KEYS_PG, params)
    else:
        rows = await conn.execute(_FILLS_OF_KEYS_SQLITE, {"keys": wanted})
    for fill in map(_fill, rows):
        fills[(fill.account_id, fill.symbol)].append(fill)
    return fills


_FILLS_OF_KEYS_PG = text(
    f"SELECT {', '.join(f'f.{column.name}' for column in position_fills.c)}"
    " FROM position_fills AS f JOIN unnest(CAST(:accounts AS varchar[]),"
    " CAST(:symbols AS varchar[])) AS k(account_id, symbol)"
    " ON f.account_id = k.account_id AND f.symbol = k.symbol"
).columns(*position_fills.c)


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
        rows = await conn.execute(_POSITIONS_OF_KEYS_SQLITE, {"keys": wanted})
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


def position_values(row: PositionRow) -> dict[str, Any]:
    """The stored columns of one position row (what is written, and what verify compares)."""
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


# PostgreSQL: the positions and the cash of a batch in one statement of one text (executemany
# would send a message per row). Positions are upserted first (the account locks wait for the
# count over ``saved``), then accounts are locked in id order and their cash moved by the
# batch's deltas: a sum, so it is added in the database, exactly (numeric arithmetic does not
# round), and read back.
_SAVE_POSITIONS_AND_CASH_PG = text(
    "WITH saved AS (INSERT INTO positions (account_id, symbol, quantity, cost_basis,"
    " realized_pnl, fees, fill_count, last_filled_at, last_fill_id, updated_at)"
    " SELECT * FROM unnest(CAST(:account_id AS varchar[]), CAST(:symbol AS varchar[]),"
    " CAST(:quantity AS numeric[]), CAST(:cost_basis AS numeric[]),"
    " CAST(:realized_pnl AS numeric[]), CAST(:fees AS numeric[]),"
    " CAST(:fill_count AS integer[]), CAST(:last_filled_at AS timestamptz[]),"
    " CAST(:last_fill_id AS varchar[]), CAST(:updated_at AS timestamptz[]))"
    " ON CONFLICT (account_id, symbol) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _POSITION_STATE)
    + " RETURNING 1),"
    " locked AS (SELECT a.account_id FROM accounts AS a"
    " WHERE a.account_id = ANY(CAST(:cash_account AS varchar[]))"
    " AND (SELECT count(*) FROM saved) >= 0 ORDER BY a.account_id FOR UPDATE OF a)"
    " UPDATE accounts SET cash = accounts.cash + d.delta FROM locked AS l"
    " JOIN unnest(CAST(:cash_account AS varchar[]), CAST(:cash_delta AS numeric[]))"
    " AS d(account_id, delta) ON d.account_id = l.account_id"
    " WHERE accounts.account_id = l.account_id RETURNING accounts.account_id, accounts.cash"
)


async def save_positions_and_cash(
    conn: AsyncConnection,
    rows: Sequence[PositionRow],
    existing: Collection[PositionKey],
    cash_deltas: Mapping[str, Decimal],
) -> dict[str, Decimal]:
    """Write ``rows`` (an update of those in ``existing``, an insert of the rest) and move
    each account's cash by its delta; return the cash after, of each account that exists
    (one statement on PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        values = [position_values(row) for row in rows]
        arrays = {name: [v[name] for v in values] for name in _POSITION_STATE}
        accounts_moved = sorted(cash_deltas)
        params = {
            **arrays,
            "account_id": [row.key[0] for row in rows],
            "symbol": [row.key[1] for row in rows],
            "cash_account": accounts_moved,
            "cash_delta": [cash_deltas[account_id] for account_id in accounts_moved],
        }
        result = await conn.execute(_SAVE_POSITIONS_AND_CASH_PG, params)
        return {account_id: cash for account_id, cash in result.all()}
    await _save_positions_sqlite(conn, rows, existing)
    cash = await _cash_of(conn, cash_deltas)
    after = {
        account_id: exact_sum([cash_deltas[account_id]], now) for account_id, now in cash.items()
    }
    if after:
        await conn.execute(
            _UPDATE_CASH,
            [
                {"key_account_id": account_id, "cash": amount}
                for account_id, amount in after.items()
            ],
        )
    return after


async def _save_positions_sqlite(
    conn: AsyncConnection, rows: Iterable[PositionRow], existing: Collection[PositionKey]
) -> None:
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    for row in rows:
        values = position_values(row)
        account_id, symbol = row.key
        if row.key in existing:
            updates.append({"key_account_id": account_id, "key_symbol": symbol, **values})
        else:
            inserts.append({"account_id": account_id, "symbol": symbol, **values})
    if updates:
        await conn.execute(_UPDATE_POSITION, updates)
    if inserts:
        await conn.execute(_INSERT_POSITIONS, inserts)


async def _cash_of(conn: AsyncConnection, account_ids: Iterable[str]) -> dict[str, Decimal]:
    """The cash of each existing account among ``account_ids`` (SQLite: one writer, so
    nothing to lock)."""
    values = {"account_ids": sorted(set(account_ids))}
    rows = (await conn.execute(_CASH_OF_SQLITE, values)).all()
    return {account_id: cash for account_id, cash in rows}


_UPDATE_CASH = (
    update(accounts)
    .where(accounts.c.account_id == bindparam("key_account_id"))
    .values(cash=bindparam("cash"))
)

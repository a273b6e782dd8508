"""Candles in the database: upserted while open, final once closed.

A bar's row is rewritten while its bar is open (late updates inside it change it) and written
one last time with ``closed = true``. A closed row is never written again, so a replayed or
redelivered batch cannot reopen or rewrite a finished bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.market import Candle, Interval
from tradeloom.storage.database import Database
from tradeloom.storage.schema import candles

MAX_QUERY_LIMIT = 5000


def _row(candle: Candle, closed: bool) -> dict[str, object]:
    return {
        "symbol": candle.symbol,
        "interval": candle.interval.value,
        "start": candle.start,
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "trades": candle.trades,
        "closed": closed,
    }


def _candle(row: object) -> Candle:
    mapping = row._mapping  # type: ignore[attr-defined]
    return Candle(
        symbol=mapping["symbol"],
        interval=Interval(mapping["interval"]),
        start=mapping["start"],
        open=mapping["open"],
        high=mapping["high"],
        low=mapping["low"],
        close=mapping["close"],
        volume=mapping["volume"],
        trades=mapping["trades"],
    )


def _upsert(statement: PostgresInsert | SqliteInsert) -> PostgresInsert | SqliteInsert:
    """``statement`` (an insert into ``candles``) rewriting the bar's row while it is open."""
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[candles.c.symbol, candles.c.interval, candles.c.start],
        set_={
            name: getattr(excluded, name)
            for name in ("open", "high", "low", "close", "volume", "trades", "closed")
        },
        where=candles.c.closed.is_(False),
    )


# Built once and reused: the recorder upserts at every flush (four a second by default), and
# building the upsert and deriving its cache key costs ~0.5 ms here.
_UPSERT_PG = _upsert(postgresql.insert(candles))
_UPSERT_SQLITE = _upsert(sqlite.insert(candles))


async def save_candles(
    conn: AsyncConnection, open_bars: Sequence[Candle], closed_bars: Sequence[Candle]
) -> None:
    """Upsert bars inside the caller's transaction; closed rows stay closed."""
    rows = [_row(c, False) for c in open_bars] + [_row(c, True) for c in closed_bars]
    if not rows:
        return
    upsert = _UPSERT_PG if conn.dialect.name == "postgresql" else _UPSERT_SQLITE
    await conn.execute(upsert, rows)


class CandleQueries:
    """Reads candles for charts, the CLI and strategies."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def candles(
        self,
        symbol: str,
        interval: Interval,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 500,
    ) -> list[Candle]:
        """Bars of ``symbol`` starting in ``[start, end)``, oldest first: the latest ``limit``
        of them when the range holds more. The forming bar is included."""
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
        conditions = [candles.c.symbol == symbol, candles.c.interval == interval.value]
        if start is not None:
            conditions.append(candles.c.start >= start)
        if end is not None:
            conditions.append(candles.c.start < end)
        query = (
            select(candles).where(and_(*conditions)).order_by(candles.c.start.desc()).limit(limit)
        )
        async with self._database.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_candle(row) for row in reversed(rows)]

    async def open_bars(self) -> list[Candle]:
        """Every bar not yet closed, to resume aggregation after a restart."""
        async with self._database.connect() as conn:
            rows = (await conn.execute(select(candles).where(candles.c.closed.is_(False)))).all()
        return [_candle(row) for row in rows]

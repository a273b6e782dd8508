"""The relational schema, as SQLAlchemy Core tables; the migrations build exactly this.

``metadata`` carries naming conventions so every constraint and index has a predictable name
on both dialects (migrations refer to them by name). A test compares a migrated database with
``metadata`` and fails on any difference, so a change here needs a migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

from tradeloom.domain.time import require_utc

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in as aware UTC and comes out as aware UTC on every dialect.

    PostgreSQL keeps it as ``timestamptz``. SQLite has no time zones, so the UTC wall time is
    stored and the zone is put back on read. A naive or non-UTC value is refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        require_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """A Decimal stored exactly on every dialect: ``NUMERIC`` without a fixed scale on
    PostgreSQL, text on SQLite (whose NUMERIC affinity would turn it into a float)."""

    impl = Numeric(asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal) or not value.is_finite():
            raise TypeError(f"expected a finite Decimal, got {value!r}")
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(value)


# The sequence orders the relay's work. On SQLite it is the rowid, and AUTOINCREMENT keeps
# a purged maximum from ever being handed out again.
outbox = Table(
    "outbox",
    metadata,
    Column(
        "sequence",
        BigInteger().with_variant(Integer(), "sqlite"),
        Identity(),
        primary_key=True,
    ),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("topic", String(128), nullable=False),
    Column("key", String(256), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("payload", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("published_at", UtcDateTime(), nullable=True),
    sqlite_autoincrement=True,
)

# Only unpublished rows are in this index, so it stays as small as the backlog and "the next
# batch in sequence order" is an index range scan on both dialects.
Index(
    "ix_outbox_unpublished",
    outbox.c.sequence,
    postgresql_where=outbox.c.published_at.is_(None),
    sqlite_where=outbox.c.published_at.is_(None),
)


# OHLCV bars per (symbol, interval, start). A bar is rewritten while it is open (late updates
# inside it) and final once ``closed`` is true.
candles = Table(
    "candles",
    metadata,
    Column("symbol", String(32), nullable=False),
    Column("interval", String(8), nullable=False),
    Column("start", UtcDateTime(), nullable=False),
    Column("open", ExactDecimal(), nullable=False),
    Column("high", ExactDecimal(), nullable=False),
    Column("low", ExactDecimal(), nullable=False),
    Column("close", ExactDecimal(), nullable=False),
    Column("volume", ExactDecimal(), nullable=False),
    Column("trades", Integer(), nullable=False),
    Column("closed", Boolean(), nullable=False),
    PrimaryKeyConstraint("symbol", "interval", "start"),
)

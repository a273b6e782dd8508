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
    ForeignKey,
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
    UniqueConstraint,
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


# Trading accounts. ``opening_cash`` never changes; ``cash`` is kept current from fills by the
# read side. ``owner`` is indexed for "the accounts of this user".
accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("currency", String(3), nullable=False),
    Column("opening_cash", ExactDecimal(), nullable=False),
    Column("cash", ExactDecimal(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)


# The OMS's order state (command side). ``client_order_id`` is unique per account: placing
# an order twice with the same one returns the first order.
orders = Table(
    "orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("client_order_id", String(64), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("side", String(8), nullable=False),
    Column("order_type", String(16), nullable=False),
    Column("time_in_force", String(8), nullable=False),
    Column("quantity", ExactDecimal(), nullable=False),
    Column("limit_price", ExactDecimal(), nullable=True),
    Column("stop_price", ExactDecimal(), nullable=True),
    Column("status", String(24), nullable=False),
    Column("status_before_request", String(24), nullable=True),
    Column("filled_quantity", ExactDecimal(), nullable=False),
    Column("average_fill_price", ExactDecimal(), nullable=True),
    Column("reason", Text(), nullable=True),
    Column("correlation_id", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("account_id", "client_order_id"),
)
Index("ix_orders_account_id_status", orders.c.account_id, orders.c.status)

# Fills applied to an order's state, by fill id: the same fill is never applied twice.
order_fills = Table(
    "order_fills",
    metadata,
    Column("order_id", String(64), nullable=False),
    Column("fill_id", String(64), nullable=False),
    PrimaryKeyConstraint("order_id", "fill_id"),
)

# What execution sent to the broker: one row per order, inserted before the broker is called,
# so a redelivered order.submitted never reaches the broker twice. ``acknowledged_at`` is set
# by the first report that shows the broker had the order, ``closed_at``/``closed_as`` by the
# first that ended it (filled, canceled, rejected, expired) or by reconciliation at start
# (not_sent, venue_lost): the rows still open are the orders execution believes live.
broker_orders = Table(
    "broker_orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("side", String(8), nullable=False),
    Column("correlation_id", String(64), nullable=False),
    Column("causation_id", String(64), nullable=False),
    Column("broker_order_id", String(64), nullable=True),
    Column("sent_at", UtcDateTime(), nullable=False),
    Column("acknowledged_at", UtcDateTime(), nullable=True),
    Column("closed_at", UtcDateTime(), nullable=True),
    Column("closed_as", String(16), nullable=True),
)

# Only the open claims are in this index, so reconciliation reads them without a scan of
# every order ever sent.
Index(
    "ix_broker_orders_open",
    broker_orders.c.order_id,
    postgresql_where=broker_orders.c.closed_at.is_(None),
    sqlite_where=broker_orders.c.closed_at.is_(None),
)

# Broker reports already turned into events, by report id (fill id, or order id and kind):
# a report the broker repeats, or that is handled again after a crash, publishes nothing new.
broker_reports = Table(
    "broker_reports",
    metadata,
    Column("report_id", String(128), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
)


# Events a consumer has applied, by consumer group: applying the same event twice (a
# redelivery, in any order relative to others) is detected and changes nothing.
processed_events = Table(
    "processed_events",
    metadata,
    Column("consumer", String(64), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("processed_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("consumer", "event_id"),
)


# ---- Read side (issue: read models). Kept by projections from the bus; never written by the
# command side, and rebuildable from the history each projection keeps.

# The order read model: one row per order, answering "where does my order stand" at once.
# Keyset paging walks (account_id, submitted_at, order_id), which the index covers.
order_views = Table(
    "order_views",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("client_order_id", String(64), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("side", String(8), nullable=False),
    Column("order_type", String(16), nullable=False),
    Column("time_in_force", String(8), nullable=False),
    Column("quantity", ExactDecimal(), nullable=False),
    Column("filled_quantity", ExactDecimal(), nullable=False),
    Column("remaining_quantity", ExactDecimal(), nullable=False),
    Column("average_fill_price", ExactDecimal(), nullable=True),
    Column("limit_price", ExactDecimal(), nullable=True),
    Column("stop_price", ExactDecimal(), nullable=True),
    Column("status", String(24), nullable=False),
    Column("is_open", Boolean(), nullable=False),
    Column("reason", Text(), nullable=True),
    Column("correlation_id", String(64), nullable=False),
    Column("submitted_at", UtcDateTime(), nullable=False),
    Column("accepted_at", UtcDateTime(), nullable=True),
    Column("last_fill_at", UtcDateTime(), nullable=True),
    Column("closed_at", UtcDateTime(), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("event_count", Integer(), nullable=False),
    Column("last_event_id", String(64), nullable=False),
)
Index(
    "ix_order_views_account_id_submitted_at_order_id",
    order_views.c.account_id,
    order_views.c.submitted_at,
    order_views.c.order_id,
)

# Every order event the projection received, once each (by event id): the history a user can
# read, and what `tradeloom orders rebuild` folds the read model from.
order_history = Table(
    "order_history",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("correlation_id", String(64), nullable=False),
    Column("event", LargeBinary(), nullable=False),
)
Index(
    "ix_order_history_order_id_occurred_at", order_history.c.order_id, order_history.c.occurred_at
)

# Positions per (account, symbol), by the average-cost method (domain/positions.py). The cost
# basis is stored, not the rounded average, so a position is rebuilt exactly.
# ``last_filled_at``/``last_fill_id`` is the newest fill applied, in the canonical fill order.
positions = Table(
    "positions",
    metadata,
    Column("account_id", String(64), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("quantity", ExactDecimal(), nullable=False),
    Column("cost_basis", ExactDecimal(), nullable=False),
    Column("realized_pnl", ExactDecimal(), nullable=False),
    Column("fees", ExactDecimal(), nullable=False),
    Column("fill_count", Integer(), nullable=False),
    Column("last_filled_at", UtcDateTime(), nullable=False),
    Column("last_fill_id", String(64), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("account_id", "symbol"),
)

# Every fill positions applied, once each (the fill id is the idempotency key), with its terms:
# a fill that arrives out of order is placed by (filled_at, fill_id) and its position refolded.
position_fills = Table(
    "position_fills",
    metadata,
    Column("fill_id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("side", String(8), nullable=False),
    Column("quantity", ExactDecimal(), nullable=False),
    Column("price", ExactDecimal(), nullable=False),
    Column("fee", ExactDecimal(), nullable=False),
    Column("filled_at", UtcDateTime(), nullable=False),
    Column("applied_at", UtcDateTime(), nullable=False),
)
Index(
    "ix_position_fills_account_id_symbol_filled_at_fill_id",
    position_fills.c.account_id,
    position_fills.c.symbol,
    position_fills.c.filled_at,
    position_fills.c.fill_id,
)


# ---- Users (issue: web tier foundation). The username is the ``owner`` of the user's accounts.
# Only an argon2 hash of the password is kept; ``disabled`` refuses logins and every credential.
users = Table(
    "users",
    metadata,
    Column("username", String(32), primary_key=True),
    Column("password_hash", String(256), nullable=False),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# API tokens, looked up by the SHA-256 of the token (the token itself is shown once and never
# stored). A user's tokens go with the user.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column(
        "username",
        String(32),
        ForeignKey("users.username", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("name", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

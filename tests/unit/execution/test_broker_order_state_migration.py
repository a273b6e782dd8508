"""Revision 0007 fills in what execution knew of the orders it sent before it: acknowledged
when a report of theirs was recorded, closed when their end was recorded (or the OMS shows a
final fill), so the first reconciliation after the upgrade asks only about live orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection

from tradeloom.storage.database import Database
from tradeloom.storage.migrate import alembic_config, upgrade_database
from tradeloom.storage.schema import broker_orders, broker_reports, orders

SENT = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
ACKED = SENT + timedelta(seconds=1)
ENDED = SENT + timedelta(seconds=5)

# order id -> report keys recorded for it
REPORTS = {
    "o-resting": ["BrokerAccepted:o-resting"],
    "o-rejected": ["BrokerRejected:o-rejected"],
    "o-canceled": ["BrokerAccepted:o-canceled", "BrokerCanceled:o-canceled"],
    "o-expired": ["BrokerAccepted:o-expired", "BrokerExpired:o-expired"],
    "o-filled": ["BrokerAccepted:o-filled", "fill:PAPER-1-F1"],
    "o-unsent": [],
}


async def test_rows_sent_before_the_upgrade_are_marked_from_what_was_recorded(
    empty_database_url: str,
) -> None:
    await upgrade_database(empty_database_url, "0006")
    database = Database(empty_database_url)
    try:
        async with database.transaction() as conn:
            for order_id, keys in REPORTS.items():
                await conn.execute(broker_orders.insert().values(**_claim(order_id)))
                for n, key in enumerate(keys):
                    at = ACKED if n == 0 else ENDED
                    row = {"report_id": key, "order_id": order_id, "received_at": at}
                    await conn.execute(broker_reports.insert().values(**row))
            await conn.execute(orders.insert().values(**_order("o-filled", "filled")))
            await conn.execute(orders.insert().values(**_order("o-resting", "accepted")))
        await upgrade_database(empty_database_url)

        query = select(
            broker_orders.c.order_id,
            broker_orders.c.acknowledged_at,
            broker_orders.c.closed_as,
            broker_orders.c.closed_at,
        )
        async with database.connect() as conn:
            rows = {row[0]: tuple(row[1:]) for row in await conn.execute(query)}
    finally:
        await database.dispose()
    assert rows == {
        "o-resting": (ACKED, None, None),
        "o-rejected": (ACKED, "rejected", ACKED),
        "o-canceled": (ACKED, "canceled", ENDED),
        "o-expired": (ACKED, "expired", ENDED),
        "o-filled": (ACKED, "filled", ENDED),
        "o-unsent": (None, None, None),
    }


def _claim(order_id: str) -> dict[str, object]:
    return {
        "order_id": order_id,
        "account_id": "acc-1",
        "symbol": "AAPL",
        "side": "buy",
        "correlation_id": f"corr-{order_id}",
        "causation_id": f"evt-{order_id}",
        "sent_at": SENT,
    }


def _order(order_id: str, status: str) -> dict[str, object]:
    return {
        "order_id": order_id,
        "account_id": "acc-1",
        "client_order_id": f"c-{order_id}",
        "symbol": "AAPL",
        "side": "buy",
        "order_type": "limit",
        "time_in_force": "gtc",
        "quantity": Decimal(10),
        "limit_price": Decimal("187.25"),
        "status": status,
        "filled_quantity": Decimal(10) if status == "filled" else Decimal(0),
        "correlation_id": f"corr-{order_id}",
        "created_at": SENT,
        "updated_at": ENDED,
    }


async def test_the_downgrade_drops_the_columns_and_index_and_the_upgrade_runs_again(
    empty_database_url: str,
) -> None:
    await upgrade_database(empty_database_url)
    database = Database(empty_database_url)
    try:
        assert await _shape(database) == (set(ADDED_COLUMNS), {"ix_broker_orders_open"})
        async with database.transaction() as conn:
            await conn.run_sync(_downgrade_to, "0006")
        assert await _shape(database) == (set(), set())
    finally:
        await database.dispose()
    await upgrade_database(empty_database_url)


ADDED_COLUMNS = ("acknowledged_at", "closed_at", "closed_as")


async def _shape(database: Database) -> tuple[set[str], set[str]]:
    """Which of revision 0007's columns and index ``broker_orders`` has."""

    def read(conn: Connection) -> tuple[set[str], set[str]]:
        inspector = inspect(conn)
        columns = {column["name"] for column in inspector.get_columns("broker_orders")}
        indexes = {str(index["name"]) for index in inspector.get_indexes("broker_orders")}
        return columns & set(ADDED_COLUMNS), indexes & {"ix_broker_orders_open"}

    async with database.connect() as conn:
        return await conn.run_sync(read)


def _downgrade_to(conn: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = conn
    command.downgrade(config, revision)

"""Broker reports become order events once each; a report for an unknown order is parked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from tradeloom.broker.reports import BrokerAccepted, BrokerFill
from tradeloom.domain.events import DeadLettered, OrderFilled, decode_event
from tradeloom.domain.time import ManualClock
from tradeloom.execution.reports import ReportRecorder
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import broker_orders, outbox

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/exec.db")
    await upgrade(db)
    async with db.transaction() as conn:
        await conn.execute(
            broker_orders.insert(),
            {
                "order_id": "o-1",
                "account_id": "acc-1",
                "symbol": "AAPL",
                "side": "buy",
                "correlation_id": "corr-1",
                "causation_id": "evt-1",
                "sent_at": NOW,
            },
        )
    yield db
    await db.dispose()


async def published(db: Database) -> list[tuple[str, object]]:
    async with db.connect() as conn:
        rows = (await conn.execute(select(outbox.c.topic, outbox.c.payload))).all()
    return [(topic, decode_event(payload).payload) for topic, payload in rows]


def fill(order_id: str, fill_id: str) -> BrokerFill:
    return BrokerFill(
        order_id=order_id,
        account_id="acc-1",
        fill_id=fill_id,
        quantity=Decimal(10),
        price=Decimal("187.25"),
        filled_at=NOW,
        cumulative_quantity=Decimal(10),
        leaves_quantity=Decimal(0),
    )


async def test_a_fill_reported_twice_publishes_one_event(database: Database) -> None:
    recorder = ReportRecorder(database, Outbox(), ManualClock(NOW))
    await recorder.record(BrokerAccepted(order_id="o-1", account_id="acc-1", broker_order_id="b"))
    await recorder.record(fill("o-1", "f-1"))
    await recorder.record(fill("o-1", "f-1"))
    events = await published(database)
    assert [type(payload).__name__ for _, payload in events] == ["OrderAccepted", "OrderFilled"]
    [(_, filled)] = [e for e in events if isinstance(e[1], OrderFilled)]
    assert isinstance(filled, OrderFilled)
    assert (filled.symbol, filled.side.value, filled.fill_id) == ("AAPL", "buy", "f-1")
    assert recorder.duplicates == 1


async def test_a_report_for_an_order_never_sent_is_parked_in_dead_letter(
    database: Database,
) -> None:
    recorder = ReportRecorder(database, Outbox(), ManualClock(NOW))
    await recorder.record(fill("o-unknown", "f-9"))
    [(topic, parked)] = await published(database)
    assert topic == "dead_letter"
    assert isinstance(parked, DeadLettered)
    assert parked.reason == "UNKNOWN_ORDER"
    assert b'"fill_id":"f-9"' in parked.original

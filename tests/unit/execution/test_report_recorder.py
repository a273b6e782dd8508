"""Broker reports become order events once each, in a batch as one after another; a report
for an unknown order is parked."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from tests.helpers import (
    hold_outbox_key_lock,
    outbox_key_lock_is_free,
    outbox_numbers_drawn,
    statements_of,
)
from tradeloom.broker.reports import (
    BrokerAccepted,
    BrokerCanceled,
    BrokerCancelRejected,
    BrokerFill,
    BrokerReplaced,
    BrokerReplaceRejected,
    BrokerReport,
)
from tradeloom.domain.events import (
    AnyPayload,
    DeadLettered,
    Event,
    OrderAccepted,
    OrderCancelRejected,
    OrderFilled,
    OrderPartiallyFilled,
    OrderReplaceRejected,
    decode_event,
)
from tradeloom.domain.time import ManualClock
from tradeloom.execution.reports import ReportRecorder
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import broker_orders, broker_reports, outbox

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


@dataclass
class Desk:
    """A recorder over orders sent for one account of its own (tests share PostgreSQL)."""

    database: Database
    recorder: ReportRecorder
    account: str

    def order(self, name: str) -> str:
        return f"{self.account}-{name}"

    async def sent(self, *names: str) -> None:
        async with self.database.transaction() as conn:
            for name in names:
                await conn.execute(
                    broker_orders.insert(),
                    {
                        "order_id": self.order(name),
                        "account_id": self.account,
                        "symbol": "AAPL",
                        "side": "buy",
                        "correlation_id": f"corr-{name}",
                        "causation_id": f"evt-{name}",
                        "sent_at": NOW,
                    },
                )

    def ack(self, name: str) -> BrokerAccepted:
        return BrokerAccepted(
            order_id=self.order(name), account_id=self.account, broker_order_id=f"B-{name}"
        )

    def fill(self, name: str, n: int, of: int = 1) -> BrokerFill:
        return BrokerFill(
            order_id=self.order(name),
            account_id=self.account,
            fill_id=f"{self.order(name)}-f{n}",
            quantity=Decimal(10),
            price=Decimal("187.25"),
            filled_at=NOW,
            cumulative_quantity=Decimal(10 * n),
            leaves_quantity=Decimal(10 * (of - n)),
        )

    def replaced(self, name: str) -> BrokerReplaced:
        return BrokerReplaced(
            order_id=self.order(name), account_id=self.account, quantity=Decimal(5)
        )

    def canceled(self, name: str) -> BrokerCanceled:
        return BrokerCanceled(order_id=self.order(name), account_id=self.account, reason="user")

    async def published(self) -> list[tuple[str, AnyPayload]]:
        """This account's outbox, in sequence order."""
        query = (
            select(outbox.c.topic, outbox.c.payload)
            .where(outbox.c.key == self.account)
            .order_by(outbox.c.sequence)
        )
        async with self.database.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(topic, decode_event(payload).payload) for topic, payload in rows]

    async def kinds(self) -> list[str]:
        return [type(payload).__name__ for _, payload in await self.published()]


@pytest.fixture
async def desk(database: Database, unique: str) -> Desk:
    desk = Desk(database, ReportRecorder(database, Outbox(), ManualClock(NOW)), f"acc-{unique}")
    await desk.sent("o1", "o2")
    return desk


async def test_a_fill_reported_twice_publishes_one_event(desk: Desk) -> None:
    await desk.recorder.record_many([desk.ack("o1")])
    await desk.recorder.record_many([desk.fill("o1", 1)])
    await desk.recorder.record_many([desk.fill("o1", 1)])
    events = await desk.published()
    assert [type(payload).__name__ for _, payload in events] == ["OrderAccepted", "OrderFilled"]
    [filled] = [payload for _, payload in events if isinstance(payload, OrderFilled)]
    assert (filled.symbol, filled.side.value, filled.fill_id) == (
        "AAPL",
        "buy",
        f"{desk.account}-o1-f1",
    )
    assert desk.recorder.duplicates == 1


async def test_duplicates_inside_one_batch_publish_once(desk: Desk) -> None:
    batch: list[BrokerReport] = [
        desk.ack("o1"),
        desk.fill("o1", 1, of=2),
        desk.ack("o1"),
        desk.fill("o1", 1, of=2),
    ]
    await desk.recorder.record_many(batch)
    assert await desk.kinds() == ["OrderAccepted", "OrderPartiallyFilled"]
    assert (desk.recorder.recorded, desk.recorder.duplicates) == (2, 2)


async def test_duplicates_across_batches_publish_once(desk: Desk) -> None:
    await desk.recorder.record_many([desk.ack("o1"), desk.fill("o1", 1, of=2)])
    await desk.recorder.record_many([desk.fill("o1", 1, of=2), desk.fill("o1", 2, of=2)])
    assert await desk.kinds() == ["OrderAccepted", "OrderPartiallyFilled", "OrderFilled"]
    assert desk.recorder.duplicates == 1


async def test_an_ack_and_fills_of_one_order_in_one_batch_keep_their_order(desk: Desk) -> None:
    batch: list[BrokerReport] = [
        desk.ack("o1"),
        desk.ack("o2"),
        desk.fill("o1", 1, of=2),
        desk.fill("o2", 1),
        desk.fill("o1", 2, of=2),
    ]
    await desk.recorder.record_many(batch)
    events = [payload for _, payload in await desk.published()]
    assert [(type(p).__name__, getattr(p, "order_id", None)) for p in events] == [
        ("OrderAccepted", desk.order("o1")),
        ("OrderAccepted", desk.order("o2")),
        ("OrderPartiallyFilled", desk.order("o1")),
        ("OrderFilled", desk.order("o2")),
        ("OrderFilled", desk.order("o1")),
    ]
    assert isinstance(events[0], OrderAccepted)
    assert isinstance(events[2], OrderPartiallyFilled)
    query = select(broker_orders.c.order_id, broker_orders.c.broker_order_id).where(
        broker_orders.c.account_id == desk.account
    )
    async with desk.database.connect() as conn:
        stored = dict((await conn.execute(query)).all())
    assert stored == {desk.order("o1"): "B-o1", desk.order("o2"): "B-o2"}


async def test_the_row_says_whether_the_broker_had_the_order_and_how_it_ended(
    desk: Desk,
) -> None:
    """What reconciliation at start reads: the first report that shows the broker had the
    order acknowledges it, the first that ends it closes it, and a refused cancel does
    neither ("unknown order" is a refusal too)."""
    refused = BrokerCancelRejected(
        order_id=desk.order("o1"), account_id=desk.account, reason="unknown order"
    )
    await desk.recorder.record_many([refused])
    assert await _states(desk) == {"o1": (False, None), "o2": (False, None)}
    await desk.recorder.record_many([desk.fill("o1", 1, of=2), desk.fill("o2", 1)])
    assert await _states(desk) == {"o1": (True, None), "o2": (True, "filled")}
    await desk.recorder.record_many([desk.canceled("o1"), desk.canceled("o2"), desk.ack("o1")])
    assert await _states(desk) == {"o1": (True, "canceled"), "o2": (True, "filled")}


async def _states(desk: Desk) -> dict[str, tuple[bool, str | None]]:
    """(acknowledged, closed as) of the desk's orders, by order name."""
    query = select(
        broker_orders.c.order_id, broker_orders.c.acknowledged_at, broker_orders.c.closed_as
    ).where(broker_orders.c.account_id == desk.account)
    async with desk.database.connect() as conn:
        rows = (await conn.execute(query)).all()
    prefix = len(desk.account) + 1
    return {order_id[prefix:]: (acked is not None, closed) for order_id, acked, closed in rows}


async def test_reports_without_a_key_always_go_through(desk: Desk) -> None:
    await desk.recorder.record_many([desk.replaced("o1"), desk.replaced("o1")])
    await desk.recorder.record_many([desk.replaced("o1")])
    assert await desk.kinds() == ["OrderReplaced"] * 3
    assert desk.recorder.duplicates == 0


async def test_a_refused_cancel_and_a_refused_amend_are_told_apart(desk: Desk) -> None:
    """Each may repeat (a second refused request of the same order), so neither has a key."""
    cancel = BrokerCancelRejected(
        order_id=desk.order("o1"), account_id=desk.account, reason="filled"
    )
    amend = BrokerReplaceRejected(
        order_id=desk.order("o2"), account_id=desk.account, reason="moved"
    )
    await desk.recorder.record_many([cancel, amend, amend])
    events = await desk.published()
    assert [(topic, type(p).__name__) for topic, p in events] == [
        ("order.events", "OrderCancelRejected"),
        ("order.events", "OrderReplaceRejected"),
        ("order.events", "OrderReplaceRejected"),
    ]
    assert events[0][1] == OrderCancelRejected(order_id=desk.order("o1"), reason="filled")
    assert events[1][1] == OrderReplaceRejected(order_id=desk.order("o2"), reason="moved")


async def test_a_report_for_an_order_never_sent_is_parked_in_dead_letter(desk: Desk) -> None:
    unknown = BrokerFill(
        order_id=desk.order("never"),
        account_id=desk.account,
        fill_id="f-9",
        quantity=Decimal(10),
        price=Decimal("187.25"),
        filled_at=NOW,
        cumulative_quantity=Decimal(10),
        leaves_quantity=Decimal(0),
    )
    await desk.recorder.record_many([unknown, desk.ack("o1"), unknown])
    events = await desk.published()
    assert [(topic, type(p).__name__) for topic, p in events] == [
        ("dead_letter", "DeadLettered"),
        ("order.events", "OrderAccepted"),
        ("dead_letter", "DeadLettered"),
    ]
    parked = events[0][1]
    assert isinstance(parked, DeadLettered)
    assert parked.reason == "UNKNOWN_ORDER"
    assert b'"fill_id":"f-9"' in parked.original
    assert (desk.recorder.unknown, desk.recorder.recorded) == (2, 1)
    async with desk.database.connect() as conn:
        keys = (
            await conn.execute(
                select(broker_reports.c.report_id).where(
                    broker_reports.c.order_id == desk.order("never")
                )
            )
        ).all()
    assert keys == [], "an unknown order's report must not take its idempotency key"


async def test_a_failed_batch_records_nothing_and_can_be_recorded_again(desk: Desk) -> None:
    """The events fail last (on PostgreSQL inside the one statement, after its keys and marks
    were written): nothing of the batch stays, so it is recorded in full the second time."""

    class Refusing(Outbox):
        async def add_many(self, conn: object, items: object) -> None:
            raise ConnectionError("database went away")

        def pg_parameters(self, items: Sequence[tuple[str, str, Event]]) -> dict[str, object]:
            values = super().pg_parameters(items)
            values["outbox_created_at"] = None  # NOT NULL: the database refuses the events
            return values

    refusing = ReportRecorder(desk.database, Refusing(), ManualClock(NOW))
    batch: list[BrokerReport] = [desk.ack("o1"), desk.fill("o1", 1)]
    with pytest.raises((ConnectionError, IntegrityError)):
        await refusing.record_many(batch)
    assert await desk.kinds() == []
    async with desk.database.connect() as conn:
        keys = (await conn.execute(select(broker_reports.c.report_id))).all()
        marked = (
            await conn.execute(
                select(broker_orders.c.acknowledged_at).where(
                    broker_orders.c.order_id == desk.order("o1")
                )
            )
        ).scalar()
    assert [key for (key,) in keys if desk.order("o1") in key] == []
    assert marked is None
    await desk.recorder.record_many(batch)
    assert await desk.kinds() == ["OrderAccepted", "OrderFilled"]


REPORT_KINDS = ("ack", "fill1", "fill2", "replaced", "canceled", "unknown")


def test_a_batch_publishes_what_recording_one_after_another_does(database_url: str) -> None:
    """Property: any sequence of reports (repeats, two orders, an unknown one), recorded in
    any split into batches, publishes the same events, in the same order, as recording each
    report alone."""
    asyncio.run(upgrade_database(database_url))

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        picks=st.lists(
            st.tuples(st.sampled_from(REPORT_KINDS), st.sampled_from(("o1", "o2"))), max_size=14
        ),
        cuts=st.lists(st.integers(0, 14), max_size=4),
    )
    def run(picks: list[tuple[str, str]], cuts: list[int]) -> None:
        async def outcome(desk: Desk, batches: list[list[BrokerReport]]) -> list[tuple[str, ...]]:
            for batch in batches:
                await desk.recorder.record_many(batch)
            return [
                (topic, type(p).__name__, getattr(p, "order_id", "")[len(desk.account) :])
                for topic, p in await desk.published()
            ]

        async def scenario() -> None:
            database = Database(database_url, pool_size=2)
            try:
                one, many = (
                    Desk(database, ReportRecorder(database, Outbox(), ManualClock(NOW)), a)
                    for a in (f"p{uuid.uuid4().hex[:10]}", f"p{uuid.uuid4().hex[:10]}")
                )
                for desk in (one, many):
                    await desk.sent("o1", "o2")
                alone = await outcome(one, [[report] for report in reports(one, picks)])
                sequence = reports(many, picks)
                bounds = sorted({0, len(sequence), *(c for c in cuts if c < len(sequence))})
                split = [sequence[a:b] for a, b in itertools.pairwise(bounds)]
                assert await outcome(many, split) == alone
                assert (many.recorder.recorded, many.recorder.duplicates) == (
                    one.recorder.recorded,
                    one.recorder.duplicates,
                )
            finally:
                await database.dispose()

        asyncio.run(scenario())

    run()


def reports(desk: Desk, picks: list[tuple[str, str]]) -> list[BrokerReport]:
    out: list[BrokerReport] = []
    for kind, name in picks:
        if kind == "ack":
            out.append(desk.ack(name))
        elif kind == "fill1":
            out.append(desk.fill(name, 1, of=2))
        elif kind == "fill2":
            out.append(desk.fill(name, 2, of=2))
        elif kind == "replaced":
            out.append(desk.replaced(name))
        elif kind == "canceled":
            out.append(desk.canceled(name))
        else:
            out.append(desk.fill(f"never-{name}", 1))
    return out


async def test_the_first_acknowledgements_broker_order_id_is_kept(desk: Desk) -> None:
    """A repeated acknowledgement (the broker's, or ours after a crash) names no new broker
    id, in the same batch or a later one."""
    again = BrokerAccepted(
        order_id=desk.order("o1"), account_id=desk.account, broker_order_id="B-other"
    )
    await desk.recorder.record_many([desk.ack("o1"), again])
    await desk.recorder.record_many([again])
    query = select(broker_orders.c.broker_order_id).where(
        broker_orders.c.order_id == desk.order("o1")
    )
    async with desk.database.connect() as conn:
        assert (await conn.execute(query)).scalar() == "B-o1"
    assert await desk.kinds() == ["OrderAccepted"]
    assert desk.recorder.duplicates == 2


async def test_on_postgresql_a_batch_is_one_statement_after_one_read(desk: Desk) -> None:
    if desk.database.dialect != "postgresql":
        pytest.skip("SQLite records a batch in a transaction of several statements")
    batch: list[BrokerReport] = [desk.ack("o1"), desk.fill("o1", 1), desk.ack("o2")]
    with statements_of(desk.database) as sent:
        await desk.recorder.record_many(batch)
    assert [s.split()[0] for s in sent] == ["SELECT", "WITH"]
    assert await desk.kinds() == ["OrderAccepted", "OrderFilled", "OrderAccepted"]


async def test_on_postgresql_events_are_numbered_only_once_their_keys_lock_is_held(
    desk: Desk,
) -> None:
    if desk.database.dialect != "postgresql":
        pytest.skip("SQLite has one writer: no key locks")
    drawn_before = await outbox_numbers_drawn(desk.database)
    async with desk.database.transaction() as holder:
        await hold_outbox_key_lock(holder, desk.account)
        recording = asyncio.ensure_future(desk.recorder.record_many([desk.ack("o1")]))
        await asyncio.sleep(0.5)
        assert not recording.done()
        assert await outbox_numbers_drawn(desk.database) == drawn_before
    await recording
    assert await desk.kinds() == ["OrderAccepted"]


async def test_on_postgresql_a_batch_waiting_for_an_orders_row_holds_no_key_lock(
    desk: Desk,
) -> None:
    """Row locks first, then key locks, as reconciliation takes them: the other way round the
    two deadlock."""
    if desk.database.dialect != "postgresql":
        pytest.skip("SQLite has one writer: no row or key locks")
    locked_row = (
        select(broker_orders.c.order_id)
        .where(broker_orders.c.order_id == desk.order("o1"))
        .with_for_update()
    )
    async with desk.database.transaction() as holder:
        await holder.execute(locked_row)
        recording = asyncio.ensure_future(desk.recorder.record_many([desk.ack("o1")]))
        await asyncio.sleep(0.5)
        assert not recording.done()
        assert await outbox_key_lock_is_free(desk.database, desk.account)
    await recording
    assert await desk.kinds() == ["OrderAccepted"]


async def test_on_postgresql_a_repeated_report_rewrites_no_row(desk: Desk) -> None:
    if desk.database.dialect != "postgresql":
        pytest.skip("a row version is PostgreSQL's")
    version = text("SELECT xmin::text FROM broker_orders WHERE order_id = :order_id")

    async def row_version() -> object:
        async with desk.database.connect() as conn:
            return (await conn.execute(version, {"order_id": desk.order("o1")})).scalar()

    await desk.recorder.record_many([desk.ack("o1")])
    written = await row_version()
    await desk.recorder.record_many([desk.ack("o1")])
    assert await row_version() == written
    await desk.recorder.record_many([desk.fill("o1", 1)])
    assert await row_version() != written  # the closing is news: written

"""The storage contract: migrations, transactions and the transactional outbox behave the same
on SQLite and on PostgreSQL.

Every test gets a freshly migrated schema. The bus is a small recording fake so these tests
prove what the outbox guarantees, independent of any bus adapter.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, String, Table, func, inspect, select, text, update
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.helpers import eventually_equals
from tradeloom.domain.events import Event, OrderAccepted, new_event
from tradeloom.domain.time import ManualClock
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import current_revision, head_revision, upgrade, upgrade_database
from tradeloom.storage.outbox import RELAY_LOCK_ID, Outbox, OutboxRelay
from tradeloom.storage.schema import metadata, outbox

START = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
TOPIC = "order.events"
DEADLINE = 10.0

state_metadata = MetaData()
state = Table(
    "test_state",
    state_metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
)


class RecordingBus:
    """Implements the publishing half of ``EventBus``: records what it acknowledged.

    ``fail`` makes every publish raise before anything is recorded; ``lose_acks`` records the
    events (the bus has them) and then raises, as when an acknowledgement is lost on the way.
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Event]] = []
        self.fail = False
        self.lose_acks = False
        self.attempts = 0

    async def publish(self, topic: str, event: Event, key: str) -> None:
        await self.publish_many(topic, [(event, key)])

    async def publish_many(self, topic: str, items: Sequence[tuple[Event, str]]) -> None:
        self.attempts += 1
        if self.fail:
            raise ConnectionError("bus unavailable")
        self.published.extend((topic, key, event) for event, key in items)
        if self.lose_acks:
            raise TimeoutError("acknowledgement lost")

    @property
    def ids(self) -> list[str]:
        return [event.id for _, _, event in self.published]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/nested/tradeloom.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def fresh_url(database_url: str) -> str:
    """``database_url`` with none of our tables: every test starts from an empty schema."""
    db = Database(database_url)
    try:
        async with db.transaction() as conn:
            ours = [table.name for table in reversed(metadata.sorted_tables)]
            for table in ("test_state", *ours, "alembic_version"):
                await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    finally:
        await db.dispose()
    return database_url


@pytest.fixture
async def db(fresh_url: str) -> AsyncIterator[Database]:
    database = Database(fresh_url)
    await upgrade(database)
    async with database.transaction() as conn:
        await conn.run_sync(state_metadata.create_all)
    yield database
    await database.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
async def relays(
    db: Database, bus: RecordingBus, clock: ManualClock
) -> AsyncIterator[Callable[..., OutboxRelay]]:
    """Build relays on ``db`` and ``bus``; every one is closed when the test ends."""
    made: list[OutboxRelay] = []

    def make(**options: float) -> OutboxRelay:
        relay = OutboxRelay(db, bus, clock=clock, **options)  # type: ignore[arg-type]
        made.append(relay)
        return relay

    yield make
    for relay in made:
        await relay.close()


_counter = itertools.count()


def event(account: str) -> Event:
    n = next(_counter)
    return new_event(
        OrderAccepted(order_id=f"o-{n}", broker_order_id=f"b-{n}"),
        occurred_at=START,
        correlation_id=f"c-{n}",
        account_id=account,
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    await eventually_equals(check, True, DEADLINE, what=what)


async def outbox_rows(db: Database) -> list[dict[str, object]]:
    async with db.connect() as conn:
        result = await conn.execute(select(outbox).order_by(outbox.c.sequence))
        return [dict(row._mapping) for row in result]


async def unpublished(db: Database) -> int:
    async with db.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )
    return int(count or 0)


async def commit_events(db: Database, outbox_writer: Outbox, events: Sequence[Event]) -> None:
    async with db.transaction() as conn:
        await outbox_writer.add_many(conn, [(TOPIC, e.account_id or "", e) for e in events])


# --- migrations ---------------------------------------------------------------------------


def _schema_differences(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_apply_are_idempotent_and_match_the_metadata(fresh_url: str) -> None:
    assert await current_revision(fresh_url) is None

    await upgrade_database(fresh_url)
    await upgrade_database(fresh_url)

    assert await current_revision(fresh_url) == head_revision()
    db = Database(fresh_url)
    try:
        async with db.connect() as conn:
            differences = await conn.run_sync(_schema_differences)
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("outbox"))
    finally:
        await db.dispose()
    assert differences == [], f"the migrations and schema.py disagree: {differences}"
    assert tables == set(metadata.tables) | {"alembic_version"}
    [partial] = [index for index in indexes if "duplicates_constraint" not in index]
    assert partial["name"] == "ix_outbox_unpublished"
    assert partial["column_names"] == ["sequence"]
    where = {str(option) for option in partial.get("dialect_options", {}).values()}
    assert any("published_at IS NULL" in option for option in where), partial


async def test_concurrent_upgrades_run_one_after_another(fresh_url: str) -> None:
    await asyncio.gather(*(upgrade_database(fresh_url) for _ in range(3)))
    assert await current_revision(fresh_url) == head_revision()


# --- transactions -------------------------------------------------------------------------


async def test_a_failed_transaction_leaves_neither_state_nor_outbox_row(db: Database) -> None:
    writer = Outbox()

    async def place_order_then_fail() -> None:
        async with db.transaction() as conn:
            await conn.execute(state.insert().values(id=1, name="order 1"))
            await writer.add(conn, TOPIC, "acct-1", event("acct-1"))
            raise RuntimeError("risk check blew up")

    with pytest.raises(RuntimeError, match="risk check blew up"):
        await place_order_then_fail()

    async with db.connect() as conn:
        assert (await conn.execute(select(state))).all() == []
    assert await outbox_rows(db) == []


async def test_outbox_rows_commit_with_the_state_change(db: Database, clock: ManualClock) -> None:
    writer = Outbox(clock)
    placed = event("acct-1")
    async with db.transaction() as conn:
        await conn.execute(state.insert().values(id=1, name="order 1"))
        await writer.add(conn, TOPIC, "acct-1", placed)

    async with db.connect() as conn:
        assert (await conn.execute(select(state.c.name))).scalars().all() == ["order 1"]
    [row] = await outbox_rows(db)
    assert row["event_id"] == placed.id
    assert (row["topic"], row["key"], row["event_type"]) == (TOPIC, "acct-1", "order.accepted")
    assert row["created_at"] == START
    assert row["created_at"].tzinfo is not None  # type: ignore[attr-defined]
    assert row["published_at"] is None


async def test_an_event_id_is_accepted_once(db: Database) -> None:
    writer = Outbox()
    once = event("acct-1")
    await commit_events(db, writer, [once])
    with pytest.raises(IntegrityError):
        await commit_events(db, writer, [once])


async def test_a_naive_timestamp_is_refused(db: Database) -> None:
    with pytest.raises(Exception, match="no timezone"):
        async with db.transaction() as conn:
            await conn.execute(
                update(outbox).values(published_at=datetime(2025, 1, 1))  # noqa: DTZ001
            )


async def test_ping_answers(db: Database) -> None:
    await db.ping()


async def test_a_postgresql_read_runs_each_statement_on_its_own(db: Database) -> None:
    """Reads are in autocommit on PostgreSQL: no BEGIN before a read's statements, so each
    statement is a transaction of its own (now(), the transaction's start, moves between
    them), while a write block stays one transaction (now() stands still)."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite reads keep their implicit transaction")

    async def now_moves(conn: AsyncConnection) -> bool:
        before = await conn.scalar(select(func.now()))
        await conn.execute(select(func.pg_sleep(0.02)))
        return bool(await conn.scalar(select(func.now())) != before)

    async with db.connect() as conn:
        assert await now_moves(conn)
    async with db.transaction() as conn:
        assert not await now_moves(conn)


# --- the relay ----------------------------------------------------------------------------


async def test_the_relay_publishes_right_after_notify(
    db: Database, bus: RecordingBus, relays: Callable[..., OutboxRelay]
) -> None:
    relay = relays(poll_interval=600.0)  # only notify() can wake it within the deadline
    await relay.start()
    writer = Outbox()
    for expected in (1, 2):
        await commit_events(db, writer, [event("acct-1")])
        relay.notify()

        async def published(n: int = expected) -> bool:
            return len(bus.published) == n and await unpublished(db) == 0

        await eventually(published, f"event {expected} is published and marked")


async def test_a_relay_waits_for_the_lock_another_holds_then_publishes(
    db: Database, bus: RecordingBus, relays: Callable[..., OutboxRelay]
) -> None:
    """Another process's relay holds the lock (its pass may have read its batch before our
    row committed): our relay makes its pass as soon as the lock is free, not at its next
    poll."""
    if db.dialect != "postgresql":
        pytest.skip("one relay per database file on SQLite: there is no relay lock")
    relay = relays(poll_interval=600.0)  # only the waiting pass can publish in time
    async with db.connect() as holder:
        await holder.execute(select(func.pg_advisory_lock(RELAY_LOCK_ID)))
        await holder.commit()
        await relay.start()
        await commit_events(db, Outbox(), [event("acct-1")])
        relay.notify()
        await asyncio.sleep(0.05)
        assert bus.published == []  # the other relay holds the lock
        await holder.execute(select(func.pg_advisory_unlock(RELAY_LOCK_ID)))
        await holder.commit()

    async def published() -> bool:
        return len(bus.published) == 1 and await unpublished(db) == 0

    await eventually(published, "the row is published once the lock is free")


async def test_a_new_relay_publishes_what_a_crash_left_behind_in_sequence_order(
    db: Database, bus: RecordingBus, clock: ManualClock, relays: Callable[..., OutboxRelay]
) -> None:
    writer = Outbox(clock)
    for n in range(7):  # committed; then the process "died" before any relay ran
        await commit_events(db, writer, [event(f"acct-{n % 3}"), event(f"acct-{n % 2}")])
    rows = await outbox_rows(db)

    clock.advance(timedelta(seconds=5))
    relay = relays(batch_size=4, poll_interval=600.0)
    await relay.start()

    async def drained() -> bool:
        return await unpublished(db) == 0

    await eventually(drained, "the backlog is published")
    assert bus.ids == [row["event_id"] for row in rows]
    assert [(topic, key) for topic, key, _ in bus.published] == [
        (row["topic"], row["key"]) for row in rows
    ]
    assert {row["published_at"] for row in await outbox_rows(db)} == {START + timedelta(seconds=5)}


async def test_a_crash_between_publish_and_mark_republishes_the_same_events(
    db: Database, bus: RecordingBus, relays: Callable[..., OutboxRelay]
) -> None:
    writer = Outbox()
    await commit_events(db, writer, [event("acct-1"), event("acct-2"), event("acct-1")])
    assert await relays().publish_pending() == 3
    first = bus.ids

    # The mark never committed: the next relay sees the rows as unpublished.
    async with db.transaction() as conn:
        await conn.execute(update(outbox).values(published_at=None))
    assert await relays().publish_pending() == 3

    assert bus.ids == first + first, "the same event ids, so the bus's dedup drops them"
    assert await unpublished(db) == 0


async def test_an_unacknowledged_publish_is_not_marked_and_is_republished(
    db: Database, bus: RecordingBus, relays: Callable[..., OutboxRelay]
) -> None:
    writer = Outbox()
    await commit_events(db, writer, [event("acct-1"), event("acct-2")])
    bus.lose_acks = True
    with pytest.raises(TimeoutError):
        await relays().publish_pending()
    assert await unpublished(db) == 2

    bus.lose_acks = False
    assert await relays().publish_pending() == 2
    assert bus.ids[:2] == bus.ids[2:]
    assert await unpublished(db) == 0


async def test_a_failing_bus_marks_nothing_and_is_retried(
    db: Database, bus: RecordingBus, relays: Callable[..., OutboxRelay]
) -> None:
    writer = Outbox()
    committed = [event("acct-1"), event("acct-1"), event("acct-2")]
    await commit_events(db, writer, committed)
    bus.fail = True
    relay = relays(poll_interval=600.0, retry_backoff=0.01, max_backoff=0.05)
    await relay.start()

    async def retried() -> bool:
        return bus.attempts >= 3

    await eventually(retried, "the relay retried a failing bus")
    assert await unpublished(db) == 3
    assert bus.published == []

    bus.fail = False

    async def drained() -> bool:
        return await unpublished(db) == 0

    await eventually(drained, "the backlog is published once the bus is back")
    assert bus.ids == [e.id for e in committed]


async def test_concurrent_writers_are_all_published_in_per_key_order(
    db: Database, bus: RecordingBus, relays: Callable[..., OutboxRelay]
) -> None:
    relay = relays(batch_size=16, poll_interval=600.0)
    await relay.start()
    writer = Outbox()
    written: dict[int, list[str]] = {}

    async def trader(n: int) -> None:
        written[n] = []
        for _ in range(5):
            batch = [event(f"acct-{n % 4}"), event(f"acct-{n % 4}")]
            await commit_events(db, writer, batch)
            relay.notify()
            written[n].extend(e.id for e in batch)

    await asyncio.gather(*(trader(n) for n in range(20)))

    async def drained() -> bool:
        return len(bus.published) == 200 and await unpublished(db) == 0

    await eventually(drained, "all 200 events are published")

    assert sorted(bus.ids) == sorted(i for ids in written.values() for i in ids)
    assert len(set(bus.ids)) == 200, "no event published twice"
    sequence = {row["event_id"]: row["sequence"] for row in await outbox_rows(db)}
    for key in {key for _, key, _ in bus.published}:
        order = [sequence[e.id] for _, k, e in bus.published if k == key]
        assert order == sorted(order), f"{key} published out of sequence order"
    position = {event_id: i for i, event_id in enumerate(bus.ids)}
    for n, ids in written.items():
        assert [position[i] for i in ids] == sorted(position[i] for i in ids), f"trader {n}"


async def test_a_later_writer_of_the_same_key_waits_for_the_earlier_commit(
    db: Database, bus: RecordingBus, relays: Callable[..., OutboxRelay]
) -> None:
    """Without this, on PostgreSQL the later transaction could commit (and be published)
    before the earlier one. SQLite gets the same guarantee from its single writer."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite serialises every writer; the concurrent-writers test covers it")
    writer = Outbox()
    first, second = event("acct-1"), event("acct-1")

    async def second_is_waiting() -> bool:
        async with db.connect() as conn:
            waiting = await conn.scalar(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            )
        return bool(waiting)

    async with db.transaction() as conn:
        await writer.add(conn, TOPIC, "acct-1", first)
        late = asyncio.create_task(commit_events(db, writer, [second]))
        await eventually(second_is_waiting, "the second writer waits for the key")
        assert await relays().publish_pending() == 0
        assert not late.done()
    await late

    assert await relays().publish_pending() == 2
    assert bus.ids == [first.id, second.id]


async def test_publish_pending_returns_the_count_and_zero_when_idle(
    db: Database, relays: Callable[..., OutboxRelay]
) -> None:
    writer = Outbox()
    await commit_events(db, writer, [event("acct-1") for _ in range(5)])
    relay = relays(batch_size=2)
    assert await relay.publish_pending() == 5
    assert await relay.publish_pending() == 0


async def test_a_postgresql_relay_pass_reads_and_marks_on_its_lock_connection(
    db: Database, relays: Callable[..., OutboxRelay]
) -> None:
    """One pooled connection a pass whatever its batches (the lock's, in autocommit), and no
    BEGIN or COMMIT around a mark: each batch costs its read and its mark only."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite has no relay lock: a pass reads and marks on its own connections")
    await commit_events(db, Outbox(), [event("acct-1") for _ in range(5)])
    checkouts: list[object] = []
    statements: list[str] = []
    engine = db.engine.sync_engine
    on_checkout = lambda *args: checkouts.append(args)  # noqa: E731
    on_statement = lambda *args: statements.append(str(args[2]).split(None, 1)[0])  # noqa: E731
    sa_event.listen(engine, "checkout", on_checkout)
    sa_event.listen(engine, "before_cursor_execute", on_statement)
    try:
        assert await relays(batch_size=2).publish_pending() == 5  # three batches
    finally:
        sa_event.remove(engine, "checkout", on_checkout)
        sa_event.remove(engine, "before_cursor_execute", on_statement)
    assert len(checkouts) == 1
    assert statements == ["SELECT"] + ["SELECT", "UPDATE"] * 3 + ["SELECT"]  # lock ... unlock


async def test_purge_deletes_only_rows_published_long_enough_ago(
    db: Database, clock: ManualClock, relays: Callable[..., OutboxRelay]
) -> None:
    writer = Outbox(clock)
    relay = relays()
    await commit_events(db, writer, [event("acct-1"), event("acct-1")])
    await relay.publish_pending()
    clock.advance(timedelta(hours=2))
    await commit_events(db, writer, [event("acct-2")])
    await relay.publish_pending()
    clock.advance(timedelta(hours=1))
    waiting = event("acct-3")
    await commit_events(db, writer, [waiting])

    assert await relay.purge_published(older_than=timedelta(hours=2)) == 2

    remaining = await outbox_rows(db)
    assert [row["key"] for row in remaining] == ["acct-2", "acct-3"]
    assert remaining[1]["event_id"] == waiting.id


async def test_with_the_memory_bus_a_republished_backlog_is_delivered_once_in_order(
    db: Database,
) -> None:
    memory = pytest.importorskip("tradeloom.messaging.memory")
    memory_bus = memory.MemoryBus()
    await memory_bus.start()
    received: list[Event] = []

    async def handle(delivered: Event) -> None:
        received.append(delivered)

    try:
        await memory_bus.subscribe(TOPIC, "storage-contract", handle)
        writer = Outbox()
        committed = [event("acct-1"), event("acct-2"), event("acct-1"), event("acct-1")]
        await commit_events(db, writer, committed)
        relay = OutboxRelay(db, memory_bus)
        assert await relay.publish_pending() == 4
        async with db.transaction() as conn:  # the mark was lost in a crash
            await conn.execute(update(outbox).values(published_at=None))
        assert await OutboxRelay(db, memory_bus).publish_pending() == 4

        async def delivered_all() -> bool:
            return len(received) >= 4

        await eventually(delivered_all, "the subscriber got the backlog")
    finally:
        await memory_bus.close()
    assert sorted(e.id for e in received) == sorted(e.id for e in committed), "each once"
    for key in ("acct-1", "acct-2"):
        assert [e.id for e in received if e.account_id == key] == [
            e.id for e in committed if e.account_id == key
        ]

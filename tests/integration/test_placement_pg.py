"""Group commit of new orders on PostgreSQL: the same scenarios as on SQLite (see
:mod:`tests.unit.oms.placement_world`), plus what only PostgreSQL has: one statement text per
insert whatever the batch size, outbox sequence numbers in the order given, and placements
of one process racing another's over the same client order ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text

from tests.helpers import hold_outbox_key_lock, outbox_numbers_drawn
from tests.unit.oms.placement_world import (
    SCENARIOS,
    CountingDatabase,
    Desk,
    Scenario,
    open_desk,
    statements_of,
    submitted,
    write_all,
)
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.oms.repository import DuplicateClientOrderId, insert_orders, place_orders
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.schema import outbox

pytestmark = pytest.mark.postgres


@pytest.fixture
async def migrated(postgres_url: str) -> str:
    await upgrade_database(postgres_url)
    return postgres_url


@pytest.fixture
async def desk(migrated: str, unique: str) -> AsyncIterator[Desk]:
    async with open_desk(migrated, f"acc-{unique}") as made:
        yield made


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_placement(desk: Desk, scenario: Scenario) -> None:
    await scenario(desk)


async def test_a_batch_is_one_statement_of_one_text(desk: Desk) -> None:
    with statements_of(desk.database) as sent:
        for size in (1, 7, 120):
            written = await write_all(desk.writer, [desk.order() for _ in range(size)])
            assert written == [None] * size
    assert len(sent) == 3, sent  # one a batch, whatever its size
    assert len(set(sent)) == 1
    assert sent[0].startswith("WITH placed AS (INSERT INTO orders")
    assert desk.database.transactions == 3
    assert len(await desk.announced()) == 128


async def test_events_of_orders_not_inserted_are_not_written(desk: Desk) -> None:
    """A taken client order id writes neither the order nor its event; the others' events
    are numbered in the order handed over, whatever order the orders are inserted in."""
    taken = desk.order("taken")
    await desk.writer.write(taken, submitted(taken))
    batch = [desk.order(c) for c in ("z-last", "taken", "a-first", "m-middle")]
    async with desk.database.single_statement() as conn:
        inserted = await place_orders(
            conn,
            batch,
            [(ORDER_COMMANDS.name, o.account_id, submitted(o)) for o in batch],
            desk.outbox,
        )
        # Autocommit: the statement was its own transaction, committed as it returned.
        assert (await conn.execute(text("SELECT txid_current_if_assigned()"))).scalar() is None
    assert inserted == {batch[0].order_id, batch[2].order_id, batch[3].order_id}
    assert await desk.announced() == [taken.order_id] + [batch[n].order_id for n in (0, 2, 3)]


async def test_a_batch_numbers_its_events_only_once_it_holds_their_keys_lock(desk: Desk) -> None:
    """Another transaction writing the account's events holds its outbox key lock: the batch
    waits for it and draws no outbox sequence number meanwhile (the relay's per-key order
    rests on this), then writes its events in the order handed over."""
    drawn_before = await outbox_numbers_drawn(desk.database)
    batch = [desk.order(c) for c in ("z", "a", "m")]
    async with desk.database.transaction() as holder:
        await hold_outbox_key_lock(holder, desk.account)
        placing = asyncio.ensure_future(write_all(desk.writer, batch))
        await asyncio.sleep(0.5)
        assert not placing.done()
        assert await outbox_numbers_drawn(desk.database) == drawn_before
    assert await placing == [None] * 3
    assert await desk.announced() == [o.order_id for o in batch]


async def test_outbox_sequence_follows_the_order_of_the_items(desk: Desk) -> None:
    keys = [f"{desk.account}-{n % 7}" for n in range(300)]
    events = [submitted(desk.order()) for _ in keys]
    async with desk.database.transaction() as conn:
        await desk.outbox.add_many(
            conn, [(ORDER_COMMANDS.name, key, e) for key, e in zip(keys, events, strict=True)]
        )
    query = (
        select(outbox.c.event_id, outbox.c.key, outbox.c.created_at)
        .where(outbox.c.event_id.in_([e.id for e in events]))
        .order_by(outbox.c.sequence)
    )
    async with desk.database.connect() as conn:
        rows = (await conn.execute(query)).all()
    assert [row[0] for row in rows] == [e.id for e in events]
    assert [row[1] for row in rows] == keys
    assert {row[2] for row in rows} == {desk.clock.now()}


async def test_insert_orders_returns_only_those_inserted(desk: Desk) -> None:
    kept = desk.order("kept")
    async with desk.database.transaction() as conn:
        assert await insert_orders(conn, [kept]) == {kept.order_id}
    fresh, taken, twin = desk.order("fresh"), desk.order("kept"), desk.order("fresh")
    async with desk.database.transaction() as conn:
        assert await insert_orders(conn, [fresh, taken, twin]) == {fresh.order_id}
    assert await desk.stored() == {"kept": kept.order_id, "fresh": fresh.order_id}


async def test_two_writers_racing_over_the_same_client_order_ids_place_each_once(
    desk: Desk, migrated: str
) -> None:
    """Two processes' writers (two engines) each hand over the same client order ids, in
    opposite orders: each id is placed once, by one of them, and nobody deadlocks."""
    other = Desk(CountingDatabase(migrated), desk.account)  # its rows go with ``desk``'s
    ids = [f"race-{n}" for n in range(60)]
    ours = [desk.order(c) for c in ids]
    theirs = [other.order(c) for c in reversed(ids)]
    try:
        results = await asyncio.gather(
            write_all(desk.writer, ours), write_all(other.writer, theirs)
        )
    finally:
        await other.database.dispose()
    outcomes = {o.order_id: r for o, r in zip(ours + theirs, results[0] + results[1], strict=True)}
    placed = {order_id for order_id, r in outcomes.items() if r is None}
    refused = [r for r in outcomes.values() if r is not None]
    assert all(isinstance(r, DuplicateClientOrderId) for r in refused), refused
    stored = await desk.stored()
    assert set(stored) == set(ids)
    assert set(stored.values()) == placed
    assert sorted(await desk.announced()) == sorted(placed)

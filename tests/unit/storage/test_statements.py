"""Statements built once per dialect (:mod:`tradeloom.storage.statements`): one statement
object serves key lists of any length, on PostgreSQL as one statement text, and selects
exactly the keys listed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from tests.unit.recorded_sql import recorded_statements
from tradeloom.storage.database import Database
from tradeloom.storage.schema import processed_events
from tradeloom.storage.statements import ByDialect

AT = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)

_EVENT_IDS_OF = ByDialect(
    lambda among: select(processed_events.c.event_id).where(
        among(processed_events.c.event_id, "ids")
    )
)


async def _store(database: Database, event_ids: list[str]) -> None:
    consumer = f"statements-{uuid.uuid4().hex[:8]}"
    rows = [{"consumer": consumer, "event_id": i, "processed_at": AT} for i in event_ids]
    async with database.transaction() as conn:
        await conn.execute(insert(processed_events), rows)


async def _found(database: Database, wanted: list[str]) -> set[str]:
    async with database.connect() as conn:
        result = await conn.execute(_EVENT_IDS_OF(conn), {"ids": wanted})
        return set(result.scalars())


async def test_one_statement_selects_exactly_the_listed_keys_whatever_their_number(
    database: Database,
) -> None:
    tag = uuid.uuid4().hex[:8]
    stored = [f"{tag}-{n}" for n in range(4)]
    await _store(database, stored)

    assert await _found(database, stored[:1]) == set(stored[:1])
    assert await _found(database, [*stored[1:4], f"{tag}-absent"]) == set(stored[1:4])


async def test_on_postgresql_lists_of_any_length_share_one_statement_text(
    database: Database,
) -> None:
    if database.dialect != "postgresql":
        pytest.skip("SQLite has no arrays: an expanding IN, one text per length")
    tag = uuid.uuid4().hex[:8]
    with recorded_statements(database) as sent:
        for count in (1, 2, 5):
            await _found(database, [f"{tag}-{n}" for n in range(count)])

    texts = set(sent)
    assert len(texts) == 1, f"one text expected (prepared once per connection), sent: {texts}"
    assert "= ANY" in texts.pop()


async def test_a_key_longer_than_the_column_does_not_match_its_stored_prefix(
    database: Database,
) -> None:
    # processed_events.event_id is varchar(64): a list cast to varchar(64)[] would cut the
    # longer key to the stored one and match it.
    stored = uuid.uuid4().hex * 2
    await _store(database, [stored])

    assert await _found(database, [f"{stored}-longer"]) == set()
    assert await _found(database, [stored]) == {stored}

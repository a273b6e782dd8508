"""Rebuilding the order read model from its history, on SQLite and PostgreSQL: equal to what
the projection keeps, and a damaged live view (changed, missing, or without history) is
reported field by field and repaired; only checking writes nothing."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import delete, insert, update

from tests.unit.oms.conftest import ReadModel
from tests.unit.oms.order_events import START, STORIES, OrderStory
from tradeloom.oms.order_view import view_row
from tradeloom.oms.rebuild import ABSENT, PRESENT, ROW, FieldDifference, rebuild_order_views
from tradeloom.storage.schema import order_views


async def project_every_story(model: ReadModel) -> list[OrderStory]:
    stories = [make(model.account, START + timedelta(minutes=i)) for i, make in enumerate(STORIES)]
    for story in stories:
        await model.projection.handle(list(reversed(story.events)))
    return stories


def ours(differences: list[FieldDifference], stories: list[OrderStory]) -> set[tuple[str, str]]:
    """The differences about these stories' orders (the PostgreSQL database is shared)."""
    ids = {story.order_id for story in stories} | {"ghost-" + stories[0].order_id}
    return {(d.order_id, d.field) for d in differences if d.order_id in ids}


async def test_the_rebuilt_views_equal_the_projected_ones(model: ReadModel) -> None:
    stories = await project_every_story(model)
    calls: list[tuple[int, int]] = []
    report = await rebuild_order_views(
        model.database, repair=False, chunk_size=2, progress=lambda *c: calls.append(c)
    )
    assert ours(report.differences, stories) == set()
    assert report.orders >= len(stories)
    assert calls[-1] == (report.orders, report.orders)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


async def test_damaged_views_are_reported_then_repaired(model: ReadModel) -> None:
    stories = await project_every_story(model)
    changed, missing = stories[0], stories[1]
    before = {s.order_id: await model.queries.get(model.owner, s.order_id) for s in stories}
    ghost = before[changed.order_id]
    assert ghost is not None
    ghost_row = {**view_row(ghost), "order_id": "ghost-" + changed.order_id}
    async with model.database.transaction() as conn:
        await conn.execute(
            update(order_views)
            .where(order_views.c.order_id == changed.order_id)
            .values(filled_quantity=Decimal("99"), reason="tampered")
        )
        await conn.execute(delete(order_views).where(order_views.c.order_id == missing.order_id))
        await conn.execute(insert(order_views), ghost_row)

    expected = {
        (changed.order_id, "filled_quantity"),
        (changed.order_id, "reason"),
        (missing.order_id, ROW),
        (ghost_row["order_id"], ROW),
    }
    checked = await rebuild_order_views(model.database, repair=False, chunk_size=2)
    assert ours(checked.differences, stories) == expected
    assert not checked.repaired
    missing_row = next(d for d in checked.differences if d.order_id == missing.order_id)
    assert (missing_row.live, missing_row.rebuilt) == (ABSENT, PRESENT)
    tampered = next(d for d in checked.differences if d.field == "filled_quantity")
    assert (tampered.live, tampered.rebuilt) == (Decimal("99"), Decimal("100"))
    assert await model.queries.get(model.owner, missing.order_id) is None  # nothing written

    repaired = await rebuild_order_views(model.database, repair=True, chunk_size=2)
    assert ours(repaired.differences, stories) == expected
    assert repaired.repaired
    after = {s.order_id: await model.queries.get(model.owner, s.order_id) for s in stories}
    assert after == before
    assert await model.queries.get(model.owner, ghost_row["order_id"]) is None
    final = await rebuild_order_views(model.database, repair=False)
    assert ours(final.differences, stories) == set()

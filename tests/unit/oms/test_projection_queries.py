"""Queries over the projected order read model, on SQLite and PostgreSQL: keyset paging that
never repeats or skips a row while orders arrive, filters, and per-user isolation."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.unit.oms.conftest import ReadModel
from tests.unit.oms.order_events import START, OrderStory, filled_in_two_parts
from tradeloom.domain.order_view import OrderView
from tradeloom.oms.queries import InvalidQuery, OrderQueries


async def place(
    model: ReadModel,
    *,
    minutes: float = 0,
    account: str | None = None,
    symbol: str = "AAPL",
    order_id: str | None = None,
    filled: bool = False,
) -> OrderStory:
    """Project an order submitted ``minutes`` after START (accepted; filled if asked)."""
    start = START + timedelta(minutes=minutes)
    story = OrderStory(account or model.account, start=start, symbol=symbol)
    if order_id is not None:
        story.order_id = order_id
    story.submitted(quantity="10")
    story.accepted()
    if filled:
        story.fill("10", "10.00")
    await model.projection.handle(story.events)
    return story


async def every_page(queries: OrderQueries, owner: str, **filters: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = await queries.list(owner, after=cursor, **filters)
        pages.append([view.order_id for view in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def newest_first(views: list[OrderView]) -> bool:
    keys = [(view.submitted_at, view.order_id) for view in views]
    return keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)


async def test_pages_are_newest_first_and_ties_break_by_order_id(model: ReadModel) -> None:
    tied = [await place(model, minutes=5, order_id=f"tie-{model.account}-{i}") for i in range(3)]
    others = [await place(model, minutes=m) for m in (1, 2, 9)]
    pages = await every_page(model.queries, model.owner, limit=2)
    assert [len(page) for page in pages] == [2, 2, 2]
    ids = [order_id for page in pages for order_id in page]
    expected = [others[2].order_id, *(s.order_id for s in reversed(tied))]
    assert ids == [*expected, others[1].order_id, others[0].order_id]


async def test_orders_arriving_while_paging_never_repeat_or_skip_a_row(model: ReadModel) -> None:
    originals = [await place(model, minutes=m) for m in range(10)]
    seen: list[OrderView] = []
    page = await model.queries.list(model.owner, limit=3)
    newcomers = 0
    while True:
        seen.extend(page.items)
        # newer orders, one tied with the page's last row, keep arriving meanwhile
        tie = page.items[-1]
        await place(model, minutes=60 + newcomers)
        await place(model, minutes=(tie.submitted_at - START) / timedelta(minutes=1))
        newcomers += 1
        if page.next_cursor is None:
            break
        page = await model.queries.list(model.owner, limit=3, after=page.next_cursor)
    ids = [view.order_id for view in seen]
    assert len(ids) == len(set(ids)), "a row was repeated"
    assert {s.order_id for s in originals} <= set(ids), "a row that was there was skipped"
    assert newest_first(seen)


async def test_filters_by_account_status_symbol_and_time(model: ReadModel, unique: str) -> None:
    second = f"acc-a2-{unique}"
    await model.accounts.create(second, model.owner, 5_000)
    open_aapl = await place(model, minutes=1)
    filled_msft = await place(model, minutes=2, symbol="MSFT", filled=True)
    other_account = await place(model, minutes=3, account=second)

    async def ids(**filters: Any) -> set[str]:
        page = await model.queries.list(model.owner, **filters)
        return {view.order_id for view in page.items}

    everything = {open_aapl.order_id, filled_msft.order_id, other_account.order_id}
    assert await ids() == everything
    assert await ids(account_id=second) == {other_account.order_id}
    assert await ids(status="closed") == {filled_msft.order_id}
    assert await ids(status="open") == {open_aapl.order_id, other_account.order_id}
    assert await ids(symbol="MSFT") == {filled_msft.order_id}
    at = START + timedelta(minutes=2)
    assert await ids(since=at) == {filled_msft.order_id, other_account.order_id}
    assert await ids(until=at) == {open_aapl.order_id}
    assert await ids(since=at, until=at + timedelta(minutes=1)) == {filled_msft.order_id}


def cursor_of(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    ("filters", "code", "field"),
    [
        ({"limit": 0}, "invalid_limit", "limit"),
        ({"limit": 501}, "invalid_limit", "limit"),
        ({"after": "not a cursor!"}, "invalid_cursor", "after"),
        ({"after": ""}, "invalid_cursor", "after"),
        ({"after": cursor_of('["yesterday","o-1"]')}, "invalid_cursor", "after"),
        ({"after": cursor_of('["2025-03-14T09:30:00","o-1"]')}, "invalid_cursor", "after"),
        ({"after": cursor_of('{"a": 1}')}, "invalid_cursor", "after"),
        ({"status": "pending"}, "invalid_status", "status"),
        ({"since": datetime(2025, 3, 14)}, "invalid_time", "since"),  # noqa: DTZ001
        ({"since": START, "until": START}, "invalid_time", "since"),
    ],
)
async def test_a_bad_argument_is_refused_with_its_code_and_field(
    model: ReadModel, filters: dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(InvalidQuery) as refused:
        await model.queries.list(model.owner, **filters)
    assert (refused.value.code, refused.value.field) == (code, field)


async def test_a_user_never_sees_another_users_orders(model: ReadModel, unique: str) -> None:
    bob, bobs_account = f"bob-{unique}", f"acc-b-{unique}"
    await model.accounts.create(bobs_account, bob, 1_000)
    alices = filled_in_two_parts(model.account)
    await model.projection.handle(alices.events)
    bobs = await place(model, account=bobs_account)

    assert await model.queries.get(bob, alices.order_id) is None
    assert await model.queries.history(bob, alices.order_id) == []
    assert (await model.queries.list(bob, account_id=model.account)).items == ()
    assert [v.order_id for v in (await model.queries.list(bob)).items] == [bobs.order_id]

    assert await model.queries.get(model.owner, alices.order_id) is not None
    assert len(await model.queries.history(model.owner, alices.order_id)) == 4
    assert await model.queries.get(model.owner, bobs.order_id) is None
    assert bobs.order_id not in {v.order_id for v in (await model.queries.list(model.owner)).items}


async def test_history_lists_each_event_with_its_fields_in_fold_order(model: ReadModel) -> None:
    story = filled_in_two_parts(model.account)
    await model.projection.handle(list(reversed(story.events)))
    history = await model.queries.history(model.owner, story.order_id)
    assert [entry.event_id for entry in history] == [event.id for event in story.events]
    assert [entry.event_type for entry in history] == [
        "order.submitted",
        "order.accepted",
        "order.partially_filled",
        "order.filled",
    ]
    first_fill = history[2]
    assert str(first_fill.payload["price"]) == "9.90"
    assert first_fill.payload["quantity"] == 40
    assert first_fill.occurred_at == story.events[2].occurred_at
    assert {entry.correlation_id for entry in history} == {story.correlation_id}
    assert all(entry.applied for entry in history)

"""`tradeloom orders`, as a user and an operator would run it, on an embedded database that
the order projection filled: list (paged, filtered, per user), show, history, rebuild."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner, Result

from tests.unit.oms.order_events import (
    START,
    OrderStory,
    canceled_after_a_partial_fill,
    filled_in_two_parts,
    rejected,
)
from tradeloom.accounts.repository import AccountRepository
from tradeloom.cli import app
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBus
from tradeloom.oms.projection import OrderProjection
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.schema import order_views


@dataclass
class Seeded:
    url: str
    alices: list[OrderStory]  # oldest first
    bobs: OrderStory


async def _seed(url: str) -> Seeded:
    await upgrade_database(url)
    database = Database(url)
    clock = ManualClock(START + timedelta(hours=1))
    try:
        accounts = AccountRepository(database, clock)
        await accounts.create("ACC-A", "alice", 100_000)
        await accounts.create("ACC-B", "bob", 100_000)
        alices = [
            make("ACC-A", START + timedelta(minutes=i))
            for i, make in enumerate((filled_in_two_parts, canceled_after_a_partial_fill, rejected))
        ]
        bobs = filled_in_two_parts("ACC-B", START + timedelta(minutes=10))
        projection = OrderProjection(MemoryBus(), database, clock)
        for story in (*alices, bobs):
            await projection.handle(list(reversed(story.events)))
    finally:
        await database.dispose()
    return Seeded(url, alices, bobs)


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    url = f"sqlite:///{tmp_path}/orders.db"
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", url)
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables at the width
    return asyncio.run(_seed(url))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["orders", *args])


def table_rows(output: str) -> list[list[str]]:
    """The cells of a rich table's rows; a cell wrapped over several lines is joined up."""
    rows: list[list[str]] = []
    for line in output.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if rows and not cells[0]:
            rows[-1] = [" ".join(filter(None, pair)) for pair in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def test_a_user_lists_their_orders_newest_first_page_by_page(seeded: Seeded) -> None:
    first = invoke("list", "--owner", "alice", "--limit", "2")
    assert first.exit_code == 0, first.output
    newest, middle, oldest = [s.order_id for s in reversed(seeded.alices)]
    assert [row[0] for row in table_rows(first.output)] == [newest, middle]
    assert table_rows(first.output)[0][1:5] == ["ACC-A", "AAPL", "buy", "limit"]
    cursor = first.output.split("next page: --after ", 1)[1].split()[0]

    second = invoke("list", "--owner", "alice", "--limit", "2", "--after", cursor)
    assert second.exit_code == 0, second.output
    assert [row[0] for row in table_rows(second.output)] == [oldest]
    assert "next page" not in second.output


def test_filters_narrow_the_list_and_another_users_orders_never_show(seeded: Seeded) -> None:
    closed = invoke(
        "list", "--owner", "alice", "--status", "closed", "--until", "2025-03-14T09:31:30Z"
    )
    assert closed.exit_code == 0, closed.output
    rows = table_rows(closed.output)
    assert [(row[0], row[8]) for row in rows] == [
        (seeded.alices[1].order_id, "canceled"),
        (seeded.alices[0].order_id, "filled"),
    ]
    assert rows[1][5:8] == ["100", "100", "9.96"]

    bobs_view = invoke("list", "--owner", "bob", "--account", "ACC-A")
    assert bobs_view.exit_code == 0, bobs_view.output
    assert "no orders of bob" in bobs_view.output
    nobody = invoke("list", "--owner", "carol")
    assert "no orders of carol" in nobody.output


def test_show_prints_every_field_of_the_users_own_order_only(seeded: Seeded) -> None:
    order_id = seeded.alices[1].order_id
    shown = invoke("show", order_id, "--owner", "alice")
    assert shown.exit_code == 0, shown.output
    fields = dict((row[0], row[1]) for row in table_rows(shown.output))
    assert fields["status"] == "canceled"
    assert fields["reason"] == "user asked"
    assert (fields["filled_quantity"], fields["remaining_quantity"]) == ("3", "7")
    assert fields["submitted_at"] == "2025-03-14T09:31:00+00:00"

    foreign = invoke("show", order_id, "--owner", "bob")
    assert foreign.exit_code == 1
    assert f"tradeloom: order {order_id} not found for bob" in foreign.output


def test_history_prints_the_events_in_the_order_they_were_folded(seeded: Seeded) -> None:
    story = seeded.alices[0]
    shown = invoke("history", story.order_id, "--owner", "alice")
    assert shown.exit_code == 0, shown.output
    rows = table_rows(shown.output)
    assert [(row[1], row[2]) for row in rows] == [
        ("order.submitted", "yes"),
        ("order.accepted", "yes"),
        ("order.partially_filled", "yes"),
        ("order.filled", "yes"),
    ]
    assert "price=9.90" in rows[2][3]
    assert [row[4] for row in rows] == [event.id for event in story.events]
    assert invoke("history", story.order_id, "--owner", "bob").exit_code == 1


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--status", "pending"], "--status"),
        (["--since", "yesterday"], "--since"),
        (["--until", "2025-03-14T09:30:00"], "--until"),
        (["--after", "not-a-cursor"], "--after"),
        (["--limit", "0"], "--limit"),
        (["--limit", "501"], "--limit"),
    ],
)
def test_a_bad_option_exits_2_naming_it(seeded: Seeded, options: list[str], named: str) -> None:
    result = invoke("list", "--owner", "alice", *options)
    assert result.exit_code == 2, result.output
    assert named in result.output


def test_rebuild_finds_a_corrupted_view_reports_it_and_repairs_it(seeded: Seeded) -> None:
    clean = invoke("rebuild", "--check")
    assert clean.exit_code == 0, clean.output
    assert "order views match their history: 4 orders checked" in clean.output

    corrupted = seeded.alices[0].order_id
    asyncio.run(_corrupt(seeded.url, corrupted))

    check = invoke("rebuild", "--check", "--chunk-size", "1")
    assert check.exit_code == 1, check.output
    assert sorted(row for row in table_rows(check.output) if row[0] == corrupted) == [
        [corrupted, "average_fill_price", "-", "9.96"],
        [corrupted, "status", "partially_filled", "filled"],
    ]
    assert "1 of 4 order views differ from their history (2 fields)" in check.output

    repair = invoke("rebuild")
    assert repair.exit_code == 0, repair.output
    assert "repaired 1 of 4 order views (2 fields differed)" in repair.output
    again = invoke("rebuild", "--check")
    assert again.exit_code == 0, again.output
    assert "match their history" in again.output


async def _corrupt(url: str, order_id: str) -> None:
    database = Database(url)
    try:
        async with database.transaction() as conn:
            await conn.execute(
                update(order_views)
                .where(order_views.c.order_id == order_id)
                .values(status="partially_filled", average_fill_price=None)
            )
    finally:
        await database.dispose()


def test_rebuild_restores_a_deleted_view_and_drops_one_without_history(seeded: Seeded) -> None:
    async def damage() -> None:
        database = Database(seeded.url)
        try:
            async with database.transaction() as conn:
                await conn.execute(
                    update(order_views)
                    .where(order_views.c.order_id == seeded.bobs.order_id)
                    .values(order_id="ghost", quantity=Decimal(1))
                )
        finally:
            await database.dispose()

    asyncio.run(damage())
    check = invoke("rebuild", "--check")
    assert check.exit_code == 1, check.output
    assert sorted(table_rows(check.output)) == sorted(
        [
            ["ghost", "(row)", "present", "absent"],
            [seeded.bobs.order_id, "(row)", "absent", "present"],
        ]
    )
    assert invoke("rebuild").exit_code == 0
    assert invoke("rebuild", "--check").exit_code == 0
    shown = invoke("show", seeded.bobs.order_id, "--owner", "bob")
    assert shown.exit_code == 0, shown.output


@pytest.mark.parametrize("command", [[], ["list"], ["show"], ["history"], ["rebuild"]])
def test_every_orders_command_has_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output

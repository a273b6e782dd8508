"""`tradeloom positions list` and `tradeloom positions verify`, as an operator would run them,
on an embedded database that a projection filled from fill events."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
import typer
from sqlalchemy import update
from typer.testing import CliRunner, Result

from tests.unit.positions.world import START, fill_event, open_account, record_history
from tradeloom.cli.positions import positions_app
from tradeloom.config import load_settings
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.positions import PositionProjection
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import positions

app = typer.Typer()
app.add_typer(positions_app, name="positions")


@app.callback()
def main(ctx: typer.Context) -> None:
    ctx.obj = load_settings()


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/positions.db"
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", url)
    monkeypatch.setenv("TRADELOOM_CACHE_URL", "memory://")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables at the width
    return url


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["positions", *args])


def table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]


async def _trade(url: str) -> tuple[str, str]:
    database = Database(url)
    try:
        await upgrade(database)
        alice = await open_account(database, "alice", cash="1000")
        bob = await open_account(database, "bob", cash="10")
        events = [
            fill_event(alice, "AAPL", "buy", "10", "10", fee="1"),
            fill_event(alice, "MSFT", "sell", "2", "50"),
            fill_event(bob, "AAPL", "buy", "1", "9"),
        ]
        await record_history(database, events)
        clock = ManualClock(START)
        projection = PositionProjection(MemoryBus(MemoryBroker()), database, Outbox(), clock)
        await projection.handle(events)
    finally:
        await database.dispose()
    return alice, bob


async def _tamper(url: str, account: str) -> None:
    database = Database(url)
    try:
        async with database.transaction() as conn:
            await conn.execute(
                update(positions)
                .where(positions.c.account_id == account, positions.c.symbol == "MSFT")
                .values(quantity=Decimal(-3))
            )
    finally:
        await database.dispose()


@pytest.fixture
def accounts(database_url: str) -> tuple[str, str]:
    return asyncio.run(_trade(database_url))


def test_verify_passes_on_a_consistent_database_then_names_a_tampered_field(
    database_url: str, accounts: tuple[str, str]
) -> None:
    alice, _ = accounts
    clean = invoke("verify")
    assert clean.exit_code == 0, clean.output
    assert "checked 3 positions of 2 accounts from 3 fill events: 0 differences" in clean.stdout

    asyncio.run(_tamper(database_url, alice))
    tampered = invoke("verify")
    assert tampered.exit_code == 1
    assert f"difference: {alice} MSFT quantity: stored -3, recomputed -2" in tampered.stdout
    assert "1 differences" in tampered.stdout
    assert invoke("verify", "--account", accounts[1]).exit_code == 0


def test_list_prints_the_users_positions_and_says_it_has_no_prices(
    accounts: tuple[str, str],
) -> None:
    alice, bob = accounts
    listed = invoke("list", "--owner", "alice")
    assert listed.exit_code == 0, listed.output
    assert "the cache is memory://" in listed.stderr
    header, *rows, summary_header, summary = table_rows(listed.stdout.replace("┃", "│"))
    assert header[:6] == ["account", "symbol", "quantity", "average cost", "realized P&L", "fees"]
    assert rows == [
        [alice, "AAPL", "10", "10", "-1", "1", "-", "-", "-"],
        [alice, "MSFT", "-2", "50", "0", "0", "-", "-", "-"],
    ]
    assert summary_header[-1] == "equity"
    assert summary == [alice, "USD", "1000", "999", "-1", "-", "-"]
    assert bob not in listed.stdout


def test_list_refuses_another_users_account(accounts: tuple[str, str]) -> None:
    _, bob = accounts
    refused = invoke("list", "--owner", "alice", "--account", bob)
    assert refused.exit_code == 1
    assert refused.stderr.strip().endswith(f"no account '{bob}' of 'alice'")
    nobody = invoke("list", "--owner", "carol")
    assert (nobody.exit_code, nobody.stdout.strip()) == (0, "no accounts of carol")

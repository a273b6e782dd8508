"""`tradeloom users create` and `tradeloom users list`, as an operator would run them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tradeloom.cli import app
from tradeloom.storage.database import Database
from tradeloom.users.model import User
from tradeloom.users.passwords import Passwords
from tradeloom.users.repository import UserRepository

PASSWORD = "correct horse battery"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/users.db"


@pytest.fixture
def runner(database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", database_url)
    monkeypatch.setenv("TRADELOOM_CACHE_URL", "memory://")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables at the width
    return CliRunner()


def invoke(runner: CliRunner, *args: str, stdin: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=stdin)


def table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.replace("┃", "│").splitlines()
        if line.startswith("│")
    ]


def stored(database_url: str, username: str) -> tuple[User, str] | None:
    async def read() -> tuple[User, str] | None:
        database = Database(database_url)
        try:
            return await UserRepository(database).credentials(username)
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_a_user_created_with_the_password_on_stdin_is_listed_with_their_account(
    runner: CliRunner, database_url: str
) -> None:
    created = invoke(runner, "users", "create", "Alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert created.exit_code == 0, created.output
    assert "created trader alice with account " in created.output
    assert "100000 USD opening cash" in created.output

    admin = invoke(
        runner,
        "users",
        "create",
        "root",
        "--admin",
        "--password-stdin",
        "--cash",
        "0",
        stdin=PASSWORD,
    )
    assert admin.exit_code == 0, admin.output

    listed = invoke(runner, "users", "list")
    assert listed.exit_code == 0, listed.output
    header, *rows = table_rows(listed.output)
    assert header == ["user", "role", "status", "accounts", "created (UTC)"]
    assert [row[:3] for row in rows] == [["alice", "trader", "active"], ["root", "admin", "active"]]

    accounts = invoke(runner, "accounts", "list", "--owner", "alice")
    [account] = table_rows(accounts.output)[1:]
    assert account[0] == rows[0][3]
    assert account[1:5] == ["alice", "USD", "100000", "100000"]


def test_only_a_hash_of_the_password_is_stored_and_it_verifies(
    runner: CliRunner, database_url: str
) -> None:
    invoke(runner, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\r\n")
    found = stored(database_url, "alice")
    assert found is not None
    _, password_hash = found
    assert PASSWORD not in password_hash
    assert asyncio.run(Passwords().verify(password_hash, PASSWORD))


def test_without_stdin_the_password_is_asked_twice(runner: CliRunner, database_url: str) -> None:
    created = invoke(runner, "users", "create", "bob", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert created.exit_code == 0, created.output
    assert PASSWORD not in created.output
    assert stored(database_url, "bob") is not None


def test_an_account_id_and_opening_cash_can_be_chosen(runner: CliRunner) -> None:
    created = invoke(
        runner,
        "users",
        "create",
        "carol",
        "--password-stdin",
        "--account-id",
        "CAROL-1",
        "--cash",
        "2500.50",
        "--currency",
        "EUR",
        stdin=PASSWORD,
    )
    assert created.exit_code == 0, created.output
    assert "created trader carol with account CAROL-1: 2500.50 EUR opening cash" in created.output


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["al"], PASSWORD, "a username is 3-32 characters"),
        (["alice"], "short", "a password is 8-1024 characters long"),
        (["alice"], "", "--password-stdin: no password on stdin"),
        (["alice", "--cash", "-5"], PASSWORD, "--cash: must be zero or more"),
        (["alice", "--currency", "usd"], PASSWORD, "currency must be three capital letters"),
    ],
)
def test_a_refused_user_prints_one_line_and_exits_1(
    runner: CliRunner, database_url: str, args: list[str], stdin: str, message: str
) -> None:
    result = invoke(runner, "users", "create", *args, "--password-stdin", stdin=stdin)
    assert result.exit_code == 1
    assert result.output.startswith("tradeloom: ")
    assert message in result.output
    assert invoke(runner, "users", "list").output.strip() == "no users"


def test_a_taken_username_is_refused(runner: CliRunner) -> None:
    assert (
        invoke(runner, "users", "create", "alice", "--password-stdin", stdin=PASSWORD).exit_code
        == 0
    )
    again = invoke(runner, "users", "create", "ALICE", "--password-stdin", stdin=PASSWORD)
    assert again.exit_code == 1
    assert "tradeloom: user 'alice' exists already" in again.output


def test_the_existing_users_commands_still_work(runner: CliRunner) -> None:
    limits = invoke(runner, "users", "limits", "alice", "--order-rate", "7")
    assert limits.exit_code == 0, limits.output
    assert "order_rate" in limits.stdout

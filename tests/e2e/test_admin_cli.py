"""`tradeloom accounts` and `tradeloom users`, as an operator would run them.

On the default ``memory://`` cache each invocation has a cache of its own, so these tests
observe what one invocation prints; ``tests/integration/test_admin_cli_redis.py`` shows a
change made by one invocation reaching the next through Redis.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tradeloom.cli import app


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", f"sqlite:///{tmp_path}/admin.db")
    monkeypatch.setenv("TRADELOOM_BUS_URL", "memory://")
    monkeypatch.setenv("TRADELOOM_CACHE_URL", "memory://")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables and error boxes at the width
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, list(args))


def table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def limits_printed(output: str) -> dict[str, str]:
    lines = output.split("limits of ", 1)[1].splitlines()[1:]
    return dict(line.split() for line in lines if line.startswith("  "))


# -- accounts ---------------------------------------------------------------------------------


def test_a_created_account_is_printed_and_listed(runner: CliRunner) -> None:
    created = invoke(runner, "accounts", "create", "ACC-1", "--owner", "alice", "--cash", "100000")
    assert created.exit_code == 0, created.output
    assert "created account ACC-1 for alice: 100000 USD opening cash" in created.output

    other = invoke(
        runner,
        "accounts",
        "create",
        "ACC-2",
        "--owner",
        "bob",
        "--cash",
        "0.10",
        "--currency",
        "EUR",
    )
    assert other.exit_code == 0, other.output

    listed = invoke(runner, "accounts", "list")
    assert listed.exit_code == 0, listed.output
    header, *rows = table_rows(listed.output.replace("┃", "│"))
    assert header == ["account", "owner", "currency", "opening cash", "cash", "created (UTC)"]
    assert [row[:5] for row in rows] == [
        ["ACC-1", "alice", "USD", "100000", "100000"],
        ["ACC-2", "bob", "EUR", "0.10", "0.10"],
    ]

    bobs = invoke(runner, "accounts", "list", "--owner", "bob")
    assert [row[0] for row in table_rows(bobs.output)] == ["ACC-2"]
    nobody = invoke(runner, "accounts", "list", "--owner", "carol")
    assert nobody.exit_code == 0
    assert "no accounts of carol" in nobody.output


def test_a_duplicate_account_id_is_refused_in_one_line(runner: CliRunner) -> None:
    first = invoke(runner, "accounts", "create", "ACC-1", "--owner", "alice", "--cash", "100")
    assert first.exit_code == 0, first.output
    again = invoke(runner, "accounts", "create", "ACC-1", "--owner", "bob", "--cash", "5")
    assert again.exit_code == 1
    assert again.stderr.strip() == "tradeloom: account 'ACC-1' exists already"
    listed = invoke(runner, "accounts", "list")
    assert [row[1] for row in table_rows(listed.output)] == ["alice"]  # nothing changed


@pytest.mark.parametrize(
    ("cash", "problem"),
    [
        ("abc", "--cash: 'abc' is not a decimal number"),
        ("-5", "--cash: must be zero or more, got -5"),
        ("NaN", "--cash: 'NaN' is not finite"),
        ("inf", "--cash: 'inf' is not finite"),
    ],
)
def test_bad_cash_is_refused_naming_the_option(runner: CliRunner, cash: str, problem: str) -> None:
    result = invoke(runner, "accounts", "create", "ACC-1", "--owner", "alice", f"--cash={cash}")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"tradeloom: {problem}"
    assert "no accounts" in invoke(runner, "accounts", "list").output


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["bad id", "--owner", "alice"], "account id must be 1-64"),
        (["ACC-1", "--owner", "alice", "--currency", "usd"], "currency must be three capital"),
        (["ACC-1", "--owner", " "], "owner must be a user id"),
    ],
)
def test_invalid_account_terms_are_refused_in_one_line(
    runner: CliRunner, args: list[str], problem: str
) -> None:
    result = invoke(runner, "accounts", "create", *args, "--cash", "1")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert problem in result.stderr


def test_a_missing_option_is_a_usage_error(runner: CliRunner) -> None:
    result = invoke(runner, "accounts", "create", "ACC-1", "--cash", "1")
    assert result.exit_code == 2
    assert "--owner" in result.output


# -- users limits -----------------------------------------------------------------------------


MEMORY_WARNING = "the cache is memory://"


def test_limits_without_options_prints_the_defaults(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADELOOM_RISK_ORDER_RATE", "7")  # defaults come from the settings
    result = invoke(runner, "users", "limits", "alice")
    assert result.exit_code == 0, result.output
    assert limits_printed(result.stdout) == {
        "max_order_notional": "1000000",
        "max_open_orders": "200",
        "max_concentration": "0.20",
        "order_rate": "7",
        "order_rate_window": "1.0",
    }
    assert MEMORY_WARNING in result.stderr


def test_limits_set_prints_the_effective_limits_and_warns_about_the_memory_cache(
    runner: CliRunner,
) -> None:
    result = invoke(
        runner,
        "users",
        "limits",
        "alice",
        "--max-order-notional",
        "25000.50",
        "--max-open-orders",
        "3",
        "--max-concentration",
        "0.5",
        "--order-rate",
        "10",
        "--order-rate-window",
        "2.5",
    )
    assert result.exit_code == 0, result.output
    assert limits_printed(result.stdout) == {
        "max_order_notional": "25000.50",
        "max_open_orders": "3",
        "max_concentration": "0.5",
        "order_rate": "10",
        "order_rate_window": "2.5",
    }
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1
    assert "only this process" in warnings[0]
    assert "TRADELOOM_CACHE_URL=redis://" in warnings[0]


def test_limits_reset_prints_the_defaults_with_any_options_given_after_it(
    runner: CliRunner,
) -> None:
    result = invoke(runner, "users", "limits", "alice", "--reset", "--max-open-orders", "4")
    assert result.exit_code == 0, result.output
    printed = limits_printed(result.stdout)
    assert printed["max_open_orders"] == "4"
    assert printed["order_rate"] == "50"
    assert "only this process" in result.stderr


@pytest.mark.parametrize(
    ("args", "exit_code", "problem"),
    [
        (["--max-concentration", "1.5"], 1, "max_concentration must be within 0..1, got 1.5"),
        (["--max-concentration", "nan"], 1, "--max-concentration: 'nan' is not finite"),
        (["--max-order-notional", "0"], 1, "--max-order-notional: must be positive, got 0"),
        (["--max-order-notional", "lots"], 1, "--max-order-notional: 'lots' is not a decimal"),
        (["--order-rate-window", "0"], 1, "--order-rate-window: must be positive seconds"),
        (["--order-rate", "0"], 2, "--order-rate"),
        (["--max-open-orders", "many"], 2, "--max-open-orders"),
    ],
)
def test_bad_limits_are_refused(
    runner: CliRunner, args: list[str], exit_code: int, problem: str
) -> None:
    result = invoke(runner, "users", "limits", "alice", *args)
    assert result.exit_code == exit_code
    assert problem in result.output
    assert "limits of alice" not in result.stdout


# -- trading states ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "state"),
    [("halt", "halted"), ("reduce-only", "reduce_only"), ("resume", "active")],
)
def test_platform_states(runner: CliRunner, command: str, state: str) -> None:
    result = invoke(runner, "users", command, "--platform")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"platform: {state}"
    assert MEMORY_WARNING in result.stderr


@pytest.mark.parametrize(
    ("command", "state"),
    [("halt", "halted"), ("reduce-only", "reduce_only"), ("resume", "active")],
)
def test_user_states(runner: CliRunner, command: str, state: str) -> None:
    result = invoke(runner, "users", command, "alice")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"user alice: {state}"


@pytest.mark.parametrize("command", ["halt", "reduce-only", "resume"])
def test_a_user_and_platform_together_or_neither_is_a_usage_error(
    runner: CliRunner, command: str
) -> None:
    both = invoke(runner, "users", command, "alice", "--platform")
    assert both.exit_code == 2
    assert "give a user id or --platform, not both" in both.output
    neither = invoke(runner, "users", command)
    assert neither.exit_code == 2
    assert "give a user id or --platform" in neither.output


def test_an_unreachable_cache_is_one_line_exit_1(runner: CliRunner) -> None:
    result = invoke(runner, "--cache-url", "redis://127.0.0.1:1/0", "users", "halt", "--platform")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(
        "tradeloom: cannot reach the cache (TRADELOOM_CACHE_URL):"
    )
    assert len(result.stderr.strip().splitlines()) == 1

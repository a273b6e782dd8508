"""The ``tradeloom`` command: help everywhere, one clear line for a bad setting."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tradeloom.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["db"],
        ["db", "upgrade"],
        ["db", "current"],
        ["config"],
        ["config", "show"],
        ["market"],
        ["market", "simulate"],
        ["market", "replay"],
        ["market", "candles"],
        ["accounts"],
        ["accounts", "create"],
        ["accounts", "list"],
        ["users"],
        ["users", "limits"],
        ["users", "halt"],
        ["users", "reduce-only"],
        ["users", "resume"],
        ["orders"],
        ["orders", "list"],
        ["orders", "show"],
        ["orders", "history"],
        ["orders", "rebuild"],
        ["positions"],
        ["positions", "list"],
        ["positions", "verify"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_a_bad_setting_exits_2_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADELOOM_CACHE_URL", "memcached://127.0.0.1")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "TRADELOOM_CACHE_URL='memcached://127.0.0.1' is invalid" in result.output


def test_config_show_prints_settings_without_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", "postgresql://trader:s3cret@db:5432/tl")
    result = runner.invoke(app, ["--bus-url", "nats://127.0.0.1:4222", "config", "show"])
    assert result.exit_code == 0, result.output
    assert "TRADELOOM_BUS_URL=nats://127.0.0.1:4222" in result.output
    assert "TRADELOOM_DATABASE_URL=postgresql://trader:***@db:5432/tl" in result.output
    assert "s3cret" not in result.output

"""The ``tradeloom`` command: help everywhere, one clear line for a bad setting."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tradeloom.cli import app

runner = CliRunner()


def command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """``path`` and the path of every command below it; groups have ``commands`` (duck-typed:
    Typer builds its tree on a Click of its own)."""
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from command_paths(sub, (*path, name))


EVERY_COMMAND = list(command_paths(typer.main.get_command(app)))


def test_the_command_tree_is_walked_to_the_leaves() -> None:
    assert {("demo",), ("users", "create"), ("users", "list"), ("db", "upgrade")} <= set(
        EVERY_COMMAND
    )


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda path: " ".join(path) or "tradeloom")
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_a_bad_setting_exits_2_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADELOOM_CACHE_URL", "memcached://127.0.0.1")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "TRADELOOM_CACHE_URL='memcached://127.0.0.1' is invalid" in result.output


@pytest.mark.parametrize(
    "command", [["serve"], ["db", "upgrade"], ["demo"], ["users", "list"]], ids=" ".join
)
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRADELOOM_BUS_URL", "nats://"),
        ("TRADELOOM_CACHE_URL", "redis://127.0.0.1:abc/0"),
        ("TRADELOOM_DATABASE_URL", "postgresql://127.0.0.1:abc/db"),
    ],
)
def test_a_bad_url_stops_every_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, command: list[str], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"tradeloom: {variable}={value!r} is invalid: expected ")


def test_the_installed_command_refuses_a_bad_bus_url_without_a_traceback(tmp_path: Path) -> None:
    """The real entry point, as the issue's audit ran it: one line on stderr, status 2."""
    script = Path(sys.executable).with_name("tradeloom")
    done = subprocess.run(
        [str(script), "serve"],
        env={"PATH": "/usr/bin:/bin", "TRADELOOM_BUS_URL": "nats://"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "tradeloom: TRADELOOM_BUS_URL='nats://' is invalid: "
        "expected memory:// or nats://HOST:PORT (the host is missing)"
    ]


def test_config_show_prints_settings_without_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", "postgresql://trader:s3cret@db:5432/tl")
    result = runner.invoke(app, ["--bus-url", "nats://127.0.0.1:4222", "config", "show"])
    assert result.exit_code == 0, result.output
    assert "TRADELOOM_BUS_URL=nats://127.0.0.1:4222" in result.output
    assert "TRADELOOM_DATABASE_URL=postgresql://trader:***@db:5432/tl" in result.output
    assert "s3cret" not in result.output

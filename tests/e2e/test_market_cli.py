"""`tradeloom market replay` then `tradeloom market candles`, as a user would run them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tradeloom.cli import app

TICKS = """timestamp,symbol,bid,ask,last,volume
2026-11-20T14:30:01Z,AAPL,187.20,187.22,,
2026-11-20T14:30:02Z,AAPL,,,187.21,100
2026-11-20T14:30:40Z,AAPL,,,187.30,50
2026-11-20T14:31:05Z,AAPL,,,187.10,25
not-a-time,AAPL,,,187.00,1
2026-11-20T14:36:00Z,AAPL,,,187.50,5
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("TRADELOOM_BUS_URL", "memory://")
    monkeypatch.setenv("TRADELOOM_CACHE_URL", "memory://")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps error boxes at the terminal width
    return CliRunner()


def test_replay_builds_candles_that_the_candles_command_prints(
    runner: CliRunner, tmp_path: Path
) -> None:
    ticks = tmp_path / "ticks.csv"
    ticks.write_text(TICKS)
    replayed = runner.invoke(app, ["market", "replay", str(ticks)])
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 6 rows into 5 updates (1 malformed rows skipped)" in replayed.output

    one_minute = runner.invoke(app, ["market", "candles", "AAPL", "--interval", "1m"])
    assert one_minute.exit_code == 0, one_minute.output
    rows = [line for line in one_minute.output.splitlines() if "2026-11-20" in line]
    assert len(rows) == 3
    cells = [cell.strip() for cell in rows[0].split("│")]
    assert cells[2:8] == ["187.21", "187.30", "187.21", "187.30", "150", "2"]

    five_minutes = runner.invoke(app, ["market", "candles", "AAPL", "--interval", "5m"])
    rows = [line for line in five_minutes.output.splitlines() if "2026-11-20" in line]
    assert [row.split("│")[6].strip() for row in rows] == ["175", "5"]


def test_a_file_that_is_not_there_is_named(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["market", "replay", str(tmp_path / "missing.csv")])
    assert result.exit_code == 2
    assert "missing.csv is not a file" in result.output


def test_an_unknown_interval_is_refused_with_the_known_ones(runner: CliRunner) -> None:
    result = runner.invoke(app, ["market", "candles", "AAPL", "--interval", "2m"])
    assert result.exit_code == 2
    assert "expected one of 1m, 5m, 1h" in result.output

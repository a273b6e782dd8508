"""`tradeloom users` on real Redis: what one invocation sets, the next one (and so a running
server sharing the cache) reads. Each test uses its own namespace and deletes its keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from tradeloom.cli import app

pytestmark = pytest.mark.redis


@pytest.fixture
def runner(
    redis_url: str, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    namespace = f"t{unique}"
    monkeypatch.setenv("TRADELOOM_NAMESPACE", namespace)
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", f"sqlite:///{tmp_path}/admin.db")
    yield CliRunner()

    async def delete_keys() -> None:
        redis = Redis.from_url(redis_url)
        try:
            keys = [key async for key in redis.scan_iter(match=f"{namespace}:*")]
            if keys:
                await redis.delete(*keys)
        finally:
            await redis.aclose()

    asyncio.run(delete_keys())


def test_a_limit_set_by_one_invocation_is_read_by_the_next(
    runner: CliRunner, redis_url: str
) -> None:
    cache = ["--cache-url", redis_url]
    changed = runner.invoke(app, [*cache, "users", "limits", "alice", "--order-rate", "7"])
    assert changed.exit_code == 0, changed.output
    assert "the cache is memory://" not in changed.output

    read = runner.invoke(app, [*cache, "users", "limits", "alice"])
    assert read.exit_code == 0, read.output
    assert "  order_rate          7\n" in read.stdout
    assert "  max_open_orders     200\n" in read.stdout

    reset = runner.invoke(app, [*cache, "users", "limits", "alice", "--reset"])
    assert "  order_rate          50\n" in reset.stdout
    again = runner.invoke(app, [*cache, "users", "limits", "alice"])
    assert "  order_rate          50\n" in again.stdout


def test_the_platform_kill_switch_outlasts_the_invocation_that_set_it(
    runner: CliRunner, redis_url: str
) -> None:
    cache = ["--cache-url", redis_url]
    halted = runner.invoke(app, [*cache, "users", "halt", "--platform"])
    assert halted.stdout.strip() == "platform: halted"

    resumed = runner.invoke(app, [*cache, "users", "resume", "alice"])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.strip() == (
        "user alice: active (effective halted: the platform is halted)"
    )

    runner.invoke(app, [*cache, "users", "resume", "--platform"])
    after = runner.invoke(app, [*cache, "users", "reduce-only", "alice"])
    assert after.stdout.strip() == "user alice: reduce_only"

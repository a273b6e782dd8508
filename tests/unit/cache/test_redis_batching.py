"""Automatic pipelining when the pipeline as a whole fails: every queued caller gets the
failure (its own copy), none is left waiting, and the batcher keeps working afterwards.
(The behaviour against a live Redis is in tests/integration/test_redis_batching.py.)"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError

from tradeloom.cache.redis_batching import CommandBatcher


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._stack: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def execute_command(self, *command: Any) -> None:
        self._stack.append(command)

    async def execute(self, raise_on_error: bool = True) -> list[object]:
        await asyncio.sleep(0)
        if self._redis.fail_pipelines:
            raise RedisConnectionError("Connection closed by server.")
        return [f"reply to {command[1]}" for command in self._stack]


class FakeRedis:
    """Answers a lone command once ``release`` is set; pipelines fail while told to."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.fail_pipelines = True

    async def execute_command(self, *command: Any) -> object:
        await self.release.wait()
        return f"reply to {command[1]}"

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


async def test_a_failed_pipeline_fails_each_queued_caller_with_its_own_copy() -> None:
    fake, batcher, lone = await busy_batcher(fail_pipelines=True)
    queued = [asyncio.create_task(batcher.execute("GET", f"k{n}")) for n in range(3)]
    await asyncio.sleep(0)
    fake.release.set()
    assert await lone == "reply to lone"
    errors = await asyncio.gather(*queued, return_exceptions=True)

    assert all(isinstance(error, RedisConnectionError) for error in errors)
    assert len({id(error) for error in errors}) == 3  # each caller's traceback its own
    assert all(isinstance(error, BaseException) and error.__cause__ for error in errors)

    fake.fail_pipelines = False  # the batcher is idle again and works as before
    assert await batcher.execute("GET", "after") == "reply to after"


async def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        CommandBatcher(cast(Redis, FakeRedis()), max_batch=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        CommandBatcher(cast(Redis, FakeRedis()), max_in_flight=0)


async def busy_batcher(
    *, fail_pipelines: bool
) -> tuple[FakeRedis, CommandBatcher, asyncio.Task[object]]:
    """A batcher of one send in flight, held by a lone GET until ``release`` is set."""
    fake = FakeRedis()
    fake.fail_pipelines = fail_pipelines
    batcher = CommandBatcher(cast(Redis, fake), max_in_flight=1)
    lone = asyncio.create_task(batcher.execute("GET", "lone"))
    await asyncio.sleep(0)
    return fake, batcher, lone


async def test_an_argument_redis_cannot_take_fails_its_caller_only_before_queueing() -> None:
    fake, batcher, lone = await busy_batcher(fail_pipelines=False)
    good = asyncio.create_task(batcher.execute("GET", "good"))
    with pytest.raises(DataError, match="invalid Redis argument None"):
        await batcher.execute("SET", "key", cast(str, None))
    with pytest.raises(DataError, match="bool"):
        await batcher.execute("SET", "key", True)
    fake.release.set()
    assert (await lone, await good) == ("reply to lone", "reply to good")


async def test_a_pipeline_cancelled_before_it_ran_fails_its_callers_and_frees_its_place() -> None:
    fake, batcher, lone = await busy_batcher(fail_pipelines=False)
    queued = asyncio.create_task(batcher.execute("GET", "queued"))
    await asyncio.sleep(0)
    fake.release.set()
    await asyncio.sleep(0)  # the lone command returns and hands the queue to a pipeline task
    for sender in list(batcher._senders):  # the loop is shutting down, say
        sender.cancel()
    assert await lone == "reply to lone"
    with pytest.raises(RuntimeError, match="cancelled"):
        await queued
    assert await batcher.execute("GET", "after") == "reply to after"  # not stuck busy

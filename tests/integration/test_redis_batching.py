"""Automatic pipelining on real Redis: commands issued while one is in flight go together,
each caller gets its own reply or error, in the order they were issued; a caller cancelled
while queued never reaches Redis.

A lone ``BLPOP`` with a timeout keeps a batcher of one send in flight busy for a known time,
so the commands issued meanwhile are queued for certain. Each test uses its own key prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tradeloom.cache.redis import RedisCache
from tradeloom.cache.redis_batching import CommandBatcher

pytestmark = pytest.mark.redis

HOLD = 0.3  # seconds the lone BLPOP keeps the batcher busy


@pytest.fixture
async def redis(redis_url: str, unique: str) -> AsyncIterator[tuple[Redis, str]]:
    client = Redis.from_url(redis_url)
    prefix = f"test:{unique}:"
    try:
        yield client, prefix
    finally:
        leftovers = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if leftovers:
            await client.delete(*leftovers)
        await client.aclose()


async def busy(client: Redis, prefix: str) -> tuple[CommandBatcher, asyncio.Task[object]]:
    """A batcher of one send in flight, held by a lone command for ``HOLD`` seconds: what
    follows is queued behind it."""
    batcher = CommandBatcher(client, max_in_flight=1)
    holding = asyncio.create_task(batcher.execute("BLPOP", prefix + "never", HOLD))
    await asyncio.sleep(0.02)
    return batcher, holding


async def test_commands_issued_while_one_is_in_flight_go_as_one_pipeline_in_order(
    redis: tuple[Redis, str],
) -> None:
    client, prefix = redis
    batcher, holding = await busy(client, prefix)
    pushes = [
        asyncio.create_task(batcher.execute("RPUSH", prefix + "list", str(n))) for n in range(50)
    ]
    await asyncio.sleep(0)
    assert not any(push.done() for push in pushes)
    lengths = await asyncio.gather(*pushes)
    assert await holding is None

    assert lengths == list(range(1, 51))  # each caller its own reply
    assert await client.lrange(prefix + "list", 0, -1) == [str(n).encode() for n in range(50)]
    assert (batcher.pipelines, batcher.pipelined) == (1, 50)


async def test_a_refused_command_fails_its_caller_only(redis: tuple[Redis, str]) -> None:
    client, prefix = redis
    await client.rpush(prefix + "a-list", "x")
    await client.set(prefix + "a-string", "value")
    batcher, holding = await busy(client, prefix)
    before = asyncio.create_task(batcher.execute("GET", prefix + "a-string"))
    wrong_type = asyncio.create_task(batcher.execute("GET", prefix + "a-list"))
    after = asyncio.create_task(batcher.execute("INCR", prefix + "counter"))
    await holding

    assert await before == b"value"
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await wrong_type
    assert await after == 1
    assert batcher.pipelined == 3


async def test_a_caller_cancelled_while_queued_never_reaches_redis(
    redis: tuple[Redis, str],
) -> None:
    client, prefix = redis
    batcher, holding = await busy(client, prefix)
    withdrawn = asyncio.create_task(batcher.execute("INCR", prefix + "withdrawn"))
    kept = asyncio.create_task(batcher.execute("INCR", prefix + "kept"))
    await asyncio.sleep(0)
    withdrawn.cancel()
    await holding

    assert await kept == 1
    with pytest.raises(asyncio.CancelledError):
        await withdrawn
    assert await client.get(prefix + "withdrawn") is None
    assert await client.get(prefix + "kept") == b"1"


async def test_a_lone_command_is_sent_at_once_without_a_pipeline(
    redis: tuple[Redis, str],
) -> None:
    client, prefix = redis
    batcher = CommandBatcher(client)
    for n in range(1, 4):
        assert await batcher.execute("INCR", prefix + "counter") == n
    assert batcher.pipelines == 0


async def test_scripts_redis_lost_are_loaded_again_lone_and_pipelined(
    redis_url: str, unique: str, redis: tuple[Redis, str]
) -> None:
    """After a Redis restart (SCRIPT FLUSH here) every script call still runs: the first
    NOSCRIPT loads the script once, and the call runs again."""
    client, prefix = redis
    cache = RedisCache(redis_url, prefix=prefix)
    await cache.start()
    try:
        assert await cache.compare_and_set("lone", None, b"1")
        await client.script_flush()
        assert await cache.compare_and_set("lone", b"1", b"2")  # lone: loaded again
        await client.script_flush()
        results = await asyncio.gather(
            *(cache.compare_and_set(f"key{n}", None, b"v") for n in range(40)),
            *(cache.increment(f"counter{n}", 1, ttl=60) for n in range(40)),
        )
        assert results == [True] * 40 + [1] * 40
        assert await cache.get("lone") == b"2"
    finally:
        await cache.close()

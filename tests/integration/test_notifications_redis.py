"""Notifications on real Redis: the append script's Lua twin behaves exactly like its Python
twin, two notifier processes never hand out the same id, and a user's stream follows live
messages through Redis pub/sub.

Each test uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.unit.notifications.builders import NOW, Accounts, Monotonic, filled, submitted
from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import Cache
from tradeloom.cache.redis import RedisCache
from tradeloom.domain.events import Event
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.notifications import MemoizedOwners, Notifier, ReplayBuffer, Reset, UserStreams
from tradeloom.notifications.messages import decode_notification, notification_body, user_channel
from tradeloom.notifications.replay_buffer import Entry
from tradeloom.notifications.script import APPEND
from tradeloom.notifications.stream import StreamItem

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_caches(redis_url: str, unique: str) -> AsyncIterator[Callable[[], RedisCache]]:
    """Makes RedisCache clients sharing one fresh prefix, as processes of one deployment."""
    prefix = f"test:{unique}:"
    made: list[RedisCache] = []

    def make() -> RedisCache:
        cache = RedisCache(redis_url, prefix=prefix, client_name=f"test-{unique}")
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()
    admin = Redis.from_url(redis_url)
    leftovers = [key async for key in admin.scan_iter(match=f"{prefix}*")]
    if leftovers:
        await admin.delete(*leftovers)
    await admin.aclose()


def entry(owner: str, event: Event) -> Entry:
    assert event.account_id is not None
    return Entry(owner, event.id, notification_body(event, event.account_id))


async def history(cache: Cache, events: list[Event]) -> list[object]:
    """One sequence of operations through every path of the script; returns every answer."""
    a, b, c, d, *more = events
    buffer = ReplayBuffer(cache, capacity=4, ttl=60.0)
    keys = ["notifications:x:seq", "notifications:x:event:e1", "notifications:x:slot:"]
    answers: list[object] = [
        await cache.run_script(APPEND, keys, ["4", "60000", '{"k":"v"}']),
        await cache.run_script(APPEND, keys, ["4", "60000", '{"k":"other"}']),
    ]
    first = await buffer.append_many([entry("alice", a), entry("bob:1", b), entry("alice", a)])
    await buffer.mark_sent(first[:2])
    answers += [
        first,
        await buffer.append_many([entry("alice", a), entry("bob:1", b), entry("alice", c)]),
        await buffer.append_many([entry("alice", e) for e in [d, *more]]),
    ]
    for owner, last_id in [("alice", 0), ("alice", 3), ("alice", 4), ("alice", 99), ("bob:1", 0)]:
        answers.append(await buffer.since(owner, last_id))
    answers += [await buffer.current_id("alice"), await buffer.current_id("nobody")]
    return answers


async def test_the_lua_and_python_twins_give_the_same_answers(
    redis_caches: Callable[[], RedisCache],
) -> None:
    events = [submitted("A1", f"o{i}") if i % 2 else filled("A1", f"o{i}") for i in range(8)]
    redis = redis_caches()
    await redis.start()
    on_redis = await history(redis, events)
    in_memory = await history(MemoryCache(clock=Monotonic()), events)
    assert on_redis == in_memory
    assert isinstance(on_redis[5], Reset)  # the history took every path
    assert on_redis[-2] == 7


async def test_slots_and_markers_expire_and_the_counter_never_does(
    redis_caches: Callable[[], RedisCache], redis_url: str, unique: str
) -> None:
    redis = redis_caches()
    await redis.start()
    event = submitted("A1")
    await ReplayBuffer(redis, ttl=300.0).append_many([entry("alice", event)])
    admin = Redis.from_url(redis_url)
    base = f"test:{unique}:notifications:alice"
    try:
        assert await admin.pttl(f"{base}:seq") == -1
        for key in (f"{base}:slot:1", f"{base}:event:{event.id}"):
            assert 299_000 < await admin.pttl(key) <= 300_000, key
    finally:
        await admin.aclose()


async def test_two_notifiers_sharing_redis_never_hand_out_the_same_id(
    redis_caches: Callable[[], RedisCache],
) -> None:
    accounts = Accounts({f"A{i}": "alice" for i in range(4)})
    caches = [redis_caches() for _ in range(3)]  # two notifier processes and a listener
    for cache in caches:
        await cache.start()
    received: list[int] = []
    await caches[2].subscribe(
        user_channel("alice"), lambda _, raw: received.append(decode_notification(raw).id)
    )
    notifiers = [
        Notifier(MemoryBus(MemoryBroker()), cache, MemoizedOwners(accounts), ManualClock(NOW))
        for cache in caches[:2]
    ]
    events = [submitted(f"A{i % 4}", f"o{i}") for i in range(200)]
    batches = [events[i : i + 5] for i in range(0, len(events), 5)]
    await asyncio.gather(*(notifiers[n % 2].handle(batch) for n, batch in enumerate(batches)))
    found = await notifiers[0].replay.since("alice", 0)
    assert not isinstance(found, Reset)
    assert [m.id for m in found.messages] == list(range(1, 201))
    assert sorted(m.event_id for m in found.messages) == sorted(e.id for e in events)
    await eventually(lambda: len(received) == 200, message=lambda: f"{len(received)} of 200")
    assert sorted(received) == list(range(1, 201))


async def test_a_stream_follows_live_messages_through_redis_pub_sub(
    redis_caches: Callable[[], RedisCache],
) -> None:
    web, worker = redis_caches(), redis_caches()
    await web.start()
    await worker.start()
    notifier = Notifier(
        MemoryBus(MemoryBroker()),
        worker,
        MemoizedOwners(Accounts({"A1": "alice"})),
        ManualClock(NOW),
    )
    await notifier.handle([submitted("A1", "o1")])
    items: list[StreamItem] = []
    three = asyncio.Event()

    def deliver(item: StreamItem) -> None:
        items.append(item)
        if len(items) >= 3:
            three.set()

    async with await UserStreams(web).stream_from("alice", 0, deliver):
        await notifier.handle([submitted("A1", "o2"), filled("A1", "o2")])
        await asyncio.wait_for(three.wait(), 5.0)
    assert [getattr(item, "id", None) for item in items] == [1, 2, 3]

"""The replay buffer on the memory cache: per-user ids, deduplication by event id, and
resuming with exactly the missing messages or a Reset, never a gap."""

from __future__ import annotations

import pytest

from tests.unit.notifications.builders import Monotonic, submitted
from tradeloom.cache.memory import MemoryCache
from tradeloom.domain.ids import new_id
from tradeloom.notifications.messages import notification_body
from tradeloom.notifications.replay_buffer import Appended, Entry, ReplayBuffer, Reset, Resume


def entry(owner: str, event_id: str | None = None) -> Entry:
    event = submitted("A1")
    return Entry(owner, event_id or new_id(), notification_body(event, "A1"))


async def append(buffer: ReplayBuffer, owner: str, count: int) -> list[int]:
    appended = await buffer.append_many([entry(owner) for _ in range(count)])
    return [item.id for item in appended]


def ids(found: Resume | Reset) -> list[int]:
    assert isinstance(found, Resume), f"expected a Resume, got {found}"
    return [message.id for message in found.messages]


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def buffer(monotonic: Monotonic) -> ReplayBuffer:
    return ReplayBuffer(MemoryCache(clock=monotonic), capacity=8, ttl=300.0)


async def test_ids_increase_per_user_and_are_independent_across_users(
    buffer: ReplayBuffer,
) -> None:
    assert await append(buffer, "alice", 3) == [1, 2, 3]
    assert await append(buffer, "bob", 2) == [1, 2]
    assert await append(buffer, "alice", 1) == [4]
    assert (await buffer.current_id("alice"), await buffer.current_id("bob")) == (4, 2)
    assert await buffer.current_id("carol") == 0


async def test_one_batch_numbers_each_users_entries_in_order(buffer: ReplayBuffer) -> None:
    batch = [entry("alice"), entry("bob"), entry("alice"), entry("bob"), entry("alice")]
    appended = await buffer.append_many(batch)
    assert [(item.owner, item.id) for item in appended] == [
        ("alice", 1),
        ("bob", 1),
        ("alice", 2),
        ("bob", 2),
        ("alice", 3),
    ]


async def test_a_repeated_event_gets_its_first_id_and_is_published_once(
    buffer: ReplayBuffer,
) -> None:
    first = (await buffer.append_many([entry("alice", "e1")]))[0]
    assert (first.id, first.publish) == (1, True)
    await buffer.mark_sent([first])
    again = await buffer.append_many([entry("alice", "e2"), entry("alice", "e1")])
    assert [(item.id, item.publish) for item in again] == [(2, True), (1, False)]
    assert again[1].message == first.message
    assert ids(await buffer.since("alice", 0)) == [1, 2]


async def test_a_repeated_event_whose_publish_was_not_confirmed_is_published_again(
    buffer: ReplayBuffer,
) -> None:
    first = (await buffer.append_many([entry("alice", "e1")]))[0]
    again = (await buffer.append_many([entry("alice", "e1")]))[0]
    assert again == Appended("alice", "e1", 1, first.message, publish=True)
    assert await buffer.current_id("alice") == 1


async def test_the_stored_message_carries_its_id_first(buffer: ReplayBuffer) -> None:
    await append(buffer, "alice", 1)
    appended = (await buffer.append_many([entry("alice")]))[0]
    assert appended.message.startswith(b'{"id":2,"type":"order.submitted",')


@pytest.mark.parametrize("last_id", [2, 5, 9])
async def test_resume_returns_exactly_the_messages_after_the_last_id(
    buffer: ReplayBuffer, last_id: int
) -> None:
    await append(buffer, "alice", 10)
    assert ids(await buffer.since("alice", last_id)) == list(range(last_id + 1, 11))


async def test_resume_at_the_current_id_returns_nothing(buffer: ReplayBuffer) -> None:
    await append(buffer, "alice", 3)
    assert ids(await buffer.since("alice", 3)) == []
    assert ids(await buffer.since("nobody", 0)) == []


async def test_a_gap_overwritten_by_newer_messages_yields_reset(buffer: ReplayBuffer) -> None:
    await append(buffer, "alice", 10)  # capacity 8: ids 1 and 2 were overwritten
    assert ids(await buffer.since("alice", 2)) == list(range(3, 11))
    assert await buffer.since("alice", 1) == Reset(current=10)
    assert await buffer.since("alice", 0) == Reset(current=10)


async def test_a_gap_older_than_the_ttl_yields_reset(
    buffer: ReplayBuffer, monotonic: Monotonic
) -> None:
    await append(buffer, "alice", 2)
    monotonic.now += 200
    await append(buffer, "alice", 2)
    monotonic.now += 100.5  # ids 1 and 2 expired, 3 and 4 have 99.5 s left
    assert await buffer.since("alice", 0) == Reset(current=4)
    assert await buffer.since("alice", 1) == Reset(current=4)
    assert ids(await buffer.since("alice", 2)) == [3, 4]


async def test_ids_keep_increasing_after_every_message_expired(
    buffer: ReplayBuffer, monotonic: Monotonic
) -> None:
    await append(buffer, "alice", 3)
    monotonic.now += 10_000
    assert await buffer.since("alice", 0) == Reset(current=3)
    assert await append(buffer, "alice", 1) == [4]


@pytest.mark.parametrize("last_id", [4, 1000, -1])
async def test_a_last_id_ahead_of_the_current_id_or_negative_yields_reset(
    buffer: ReplayBuffer, last_id: int
) -> None:
    await append(buffer, "alice", 3)
    assert await buffer.since("alice", last_id) == Reset(current=3)


async def test_the_defaults_keep_1024_messages_for_ten_minutes() -> None:
    buffer = ReplayBuffer(MemoryCache())
    assert (buffer.capacity, buffer.ttl) == (1024, 600.0)

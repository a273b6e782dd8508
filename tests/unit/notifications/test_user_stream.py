"""A user's stream on the memory cache: resumes after Last-Event-ID with no gap and no
duplicate, puts live messages in id order, fills lasting gaps from the buffer, and says Reset
whenever it cannot."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from tests.unit.notifications.builders import Monotonic, submitted
from tradeloom.cache.memory import MemoryCache
from tradeloom.notifications import (
    Notification,
    ReplayBuffer,
    Reset,
    Resume,
    UserStream,
    UserStreams,
    parse_last_event_id,
    sse_frame,
    user_channel,
)
from tradeloom.notifications.messages import notification_body
from tradeloom.notifications.replay_buffer import Appended, Entry
from tradeloom.notifications.stream import StreamItem


@dataclass
class Users:
    """Appends messages to the buffer and publishes them, or holds their publish back."""

    cache: MemoryCache
    buffer: ReplayBuffer

    async def append(self, owner: str, count: int = 1) -> list[Appended]:
        events = [submitted("A1") for _ in range(count)]
        entries = [Entry(owner, e.id, notification_body(e, "A1")) for e in events]
        return await self.buffer.append_many(entries)

    async def publish(self, *appended: Appended) -> None:
        await self.cache.publish_many([(user_channel(a.owner), a.message) for a in appended])

    async def notify(self, owner: str, count: int = 1) -> None:
        await self.publish(*await self.append(owner, count))


def ids(items: list[StreamItem]) -> list[int | str]:
    return [f"reset@{i.current}" if isinstance(i, Reset) else i.id for i in items]


async def take(stream: UserStream, count: int) -> list[int | str]:
    return ids([await asyncio.wait_for(anext(stream), 5.0) for _ in range(count)])


async def nothing_pending(stream: UserStream) -> bool:
    """True when the stream has nothing to yield right now (checked without waiting)."""
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    done = pending.done()
    pending.cancel()
    return not done


@pytest.fixture
def users() -> Users:
    cache = MemoryCache(clock=Monotonic())
    return Users(cache, ReplayBuffer(cache, capacity=8, ttl=300.0))


@pytest.fixture
def streams(users: Users) -> UserStreams:
    return UserStreams(users.cache, users.buffer, gap_timeout=0.05)


async def test_a_new_stream_starts_with_a_reset_at_the_current_id_then_follows_live(
    users: Users, streams: UserStreams
) -> None:
    await users.notify("alice", 3)
    async with await streams.stream_from("alice", None) as stream:
        await users.notify("alice", 2)
        assert await take(stream, 3) == ["reset@3", 4, 5]


async def test_a_reconnect_resumes_after_last_event_id_then_follows_live(
    users: Users, streams: UserStreams
) -> None:
    await users.notify("alice", 5)
    async with await streams.stream_from("alice", 2) as stream:
        await users.notify("alice")
        assert await take(stream, 4) == [3, 4, 5, 6]
        assert await nothing_pending(stream)


async def test_a_message_published_between_subscribe_and_buffer_read_comes_once(
    users: Users,
) -> None:
    await users.notify("alice", 2)

    class SeamBuffer(ReplayBuffer):
        """Publishes a message after the stream subscribed, before it reads the buffer."""

        async def since(self, owner: str, last_id: int) -> Resume | Reset:
            await users.notify(owner)
            return await super().since(owner, last_id)

    seam = SeamBuffer(users.cache, capacity=8, ttl=300.0)
    async with await UserStreams(users.cache, seam).stream_from("alice", 1) as stream:
        await users.notify("alice")
        assert await take(stream, 3) == [2, 3, 4]
        assert await nothing_pending(stream)


async def test_live_messages_out_of_id_order_are_yielded_in_order(
    users: Users, streams: UserStreams
) -> None:
    async with await streams.stream_from("alice", 0) as stream:
        first, second, third = await users.append("alice", 3)
        await users.publish(third, first, second)
        assert await take(stream, 3) == [1, 2, 3]


async def test_a_lasting_gap_is_filled_from_the_buffer(users: Users, streams: UserStreams) -> None:
    async with await streams.stream_from("alice", 0) as stream:
        _, second = await users.append("alice", 2)
        await users.publish(second)  # the first one's publish was lost
        assert await take(stream, 2) == [1, 2]


async def test_a_gap_is_filled_even_while_later_messages_keep_arriving() -> None:
    cache = MemoryCache(clock=Monotonic())
    users = Users(cache, ReplayBuffer(cache, capacity=64, ttl=300.0))
    streams = UserStreams(cache, users.buffer, gap_timeout=0.05)
    async with await streams.stream_from("alice", 0) as stream:
        _lost, *rest = await users.append("alice", 40)  # the first one's publish was lost

        async def trickle() -> None:  # a message every 10 ms: never 50 ms of quiet
            for message in rest:
                await users.publish(message)
                await asyncio.sleep(0.01)

        feeding = asyncio.create_task(trickle())
        assert await take(stream, 1) == [1]
        assert not feeding.done(), "the gap waited for the trickle to stop"
        assert await take(stream, 39) == list(range(2, 41))
        await feeding


async def test_a_gap_the_buffer_no_longer_holds_yields_reset(
    users: Users, streams: UserStreams
) -> None:
    async with await streams.stream_from("alice", 0) as stream:
        appended = await users.append("alice", 10)  # capacity 8: ids 1 and 2 are gone
        await users.publish(appended[-1])
        assert await take(stream, 1) == ["reset@10"]
        await users.notify("alice")
        assert await take(stream, 1) == [11]


async def test_a_reconnect_older_than_the_buffer_yields_reset_then_live(
    users: Users, streams: UserStreams
) -> None:
    await users.notify("alice", 10)
    async with await streams.stream_from("alice", 1) as stream:
        await users.notify("alice")
        assert await take(stream, 2) == ["reset@10", 11]


async def test_a_stream_yields_only_its_owners_messages(users: Users, streams: UserStreams) -> None:
    async with await streams.stream_from("alice", 0) as stream:
        await users.notify("bob", 2)
        await users.notify("alice")
        assert await take(stream, 1) == [1]
        assert await nothing_pending(stream)


async def test_a_reader_too_slow_for_max_pending_ends_the_stream(users: Users) -> None:
    streams = UserStreams(users.cache, users.buffer, max_pending=3)
    async with await streams.stream_from("alice", 0) as stream:
        await users.notify("alice", 5)
        assert [item async for item in stream] == []
        assert stream.overflowed
    async with await streams.stream_from("alice", 0) as again:  # the browser reconnects
        assert await take(again, 5) == [1, 2, 3, 4, 5]


async def test_closing_ends_a_waiting_iteration(streams: UserStreams) -> None:
    stream = await streams.stream_from("alice", 0)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    await stream.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5.0)


async def test_sse_frames_map_id_and_type(users: Users) -> None:
    (appended,) = await users.append("alice")
    message = await users.buffer.since("alice", 0)
    assert isinstance(message, Resume)
    notification: Notification = message.messages[0]
    frame = sse_frame(notification)
    assert frame.startswith("id: 1\nevent: order.submitted\ndata: {")
    assert frame.endswith("}\n\n")
    assert frame.count("\n") == 4
    assert frame.split("data: ", 1)[1].strip().encode() == appended.message
    assert sse_frame(Reset(7)) == 'id: 7\nevent: reset\ndata: {"current": 7}\n\n'


@pytest.mark.parametrize(
    ("header", "expected"), [(None, None), ("", None), (" 42 ", 42), ("x1", None), ("-3", None)]
)
def test_last_event_id_headers_parse_to_an_id_or_none(
    header: str | None, expected: int | None
) -> None:
    assert parse_last_event_id(header) == expected

"""A user's stream on the memory cache: resumes after Last-Event-ID with no gap and no
duplicate, puts live messages in id order, fills lasting gaps from the buffer, and says Reset
whenever it cannot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.unit.notifications.builders import Monotonic, submitted
from tradeloom.cache.memory import MemoryCache
from tradeloom.notifications import (
    Notification,
    ReplayBuffer,
    Reset,
    Resume,
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


class Received:
    """What a stream delivered, in order (its ``deliver``), and whether it ended itself."""

    def __init__(self) -> None:
        self.items: list[StreamItem] = []
        self.taken = 0
        self.ended = False
        self._more = asyncio.Event()

    def __call__(self, item: StreamItem) -> None:
        self.items.append(item)
        self._more.set()

    def end(self) -> None:
        self.ended = True
        self._more.set()

    async def take(self, count: int) -> list[int | str]:
        """The next ``count`` items' ids, waiting for them (5 s at most)."""
        async with asyncio.timeout(5.0):
            while len(self.items) - self.taken < count:
                self._more.clear()
                await self._more.wait()
        taken = self.items[self.taken : self.taken + count]
        self.taken += count
        return ids(taken)

    async def until_ended(self) -> None:
        async with asyncio.timeout(5.0):
            while not self.ended:
                self._more.clear()
                await self._more.wait()

    async def nothing_pending(self) -> bool:
        """True when nothing more was delivered, even after the loop ran once more."""
        await asyncio.sleep(0)
        return len(self.items) == self.taken


@pytest.fixture
def received() -> Received:
    return Received()


class GapReads(ReplayBuffer):
    """The buffer, whose reads after the open's (a gap's) are ``gap_read`` instead."""

    def __init__(self, cache: MemoryCache, gap_read: Callable[[], Awaitable[Resume | Reset]]):
        super().__init__(cache, capacity=8, ttl=300.0)
        self._gap_read = gap_read
        self._opened = False

    async def since(self, owner: str, last_id: int) -> Resume | Reset:
        if not self._opened:
            self._opened = True
            return await super().since(owner, last_id)
        return await self._gap_read()


@pytest.fixture
def users() -> Users:
    cache = MemoryCache(clock=Monotonic())
    return Users(cache, ReplayBuffer(cache, capacity=8, ttl=300.0))


@pytest.fixture
def streams(users: Users) -> UserStreams:
    return UserStreams(users.cache, users.buffer, gap_timeout=0.05)


async def test_a_new_stream_starts_with_a_reset_at_the_current_id_then_follows_live(
    users: Users, streams: UserStreams, received: Received
) -> None:
    await users.notify("alice", 3)
    async with await streams.stream_from("alice", None, received):
        await users.notify("alice", 2)
        assert await received.take(3) == ["reset@3", 4, 5]


async def test_a_reconnect_resumes_after_last_event_id_then_follows_live(
    users: Users, streams: UserStreams, received: Received
) -> None:
    await users.notify("alice", 5)
    async with await streams.stream_from("alice", 2, received):
        await users.notify("alice")
        assert await received.take(4) == [3, 4, 5, 6]
        assert await received.nothing_pending()


async def test_a_message_published_between_subscribe_and_buffer_read_comes_once(
    users: Users, received: Received
) -> None:
    await users.notify("alice", 2)

    class SeamBuffer(ReplayBuffer):
        """Publishes a message after the stream subscribed, before it reads the buffer."""

        async def since(self, owner: str, last_id: int) -> Resume | Reset:
            await users.notify(owner)
            return await super().since(owner, last_id)

    seam = SeamBuffer(users.cache, capacity=8, ttl=300.0)
    async with await UserStreams(users.cache, seam).stream_from("alice", 1, received):
        await users.notify("alice")
        assert await received.take(3) == [2, 3, 4]
        assert await received.nothing_pending()


async def test_live_messages_out_of_id_order_are_yielded_in_order(
    users: Users, streams: UserStreams, received: Received
) -> None:
    async with await streams.stream_from("alice", 0, received):
        first, second, third = await users.append("alice", 3)
        await users.publish(third, first, second)
        assert await received.take(3) == [1, 2, 3]


async def test_a_lasting_gap_is_filled_from_the_buffer(
    users: Users, streams: UserStreams, received: Received
) -> None:
    async with await streams.stream_from("alice", 0, received):
        _, second = await users.append("alice", 2)
        await users.publish(second)  # the first one's publish was lost
        assert await received.take(2) == [1, 2]


async def test_a_gap_is_filled_even_while_later_messages_keep_arriving(received: Received) -> None:
    cache = MemoryCache(clock=Monotonic())
    users = Users(cache, ReplayBuffer(cache, capacity=64, ttl=300.0))
    streams = UserStreams(cache, users.buffer, gap_timeout=0.05)
    async with await streams.stream_from("alice", 0, received):
        _lost, *rest = await users.append("alice", 40)  # the first one's publish was lost

        async def trickle() -> None:  # a message every 10 ms: never 50 ms of quiet
            for message in rest:
                await users.publish(message)
                await asyncio.sleep(0.01)

        feeding = asyncio.create_task(trickle())
        assert await received.take(1) == [1]
        assert not feeding.done(), "the gap waited for the trickle to stop"
        assert await received.take(39) == list(range(2, 41))
        await feeding


async def test_a_gap_the_buffer_no_longer_holds_yields_reset(
    users: Users, streams: UserStreams, received: Received
) -> None:
    async with await streams.stream_from("alice", 0, received):
        appended = await users.append("alice", 10)  # capacity 8: ids 1 and 2 are gone
        await users.publish(appended[-1])
        assert await received.take(1) == ["reset@10"]
        await users.notify("alice")
        assert await received.take(1) == [11]


async def test_a_reconnect_older_than_the_buffer_yields_reset_then_live(
    users: Users, streams: UserStreams, received: Received
) -> None:
    await users.notify("alice", 10)
    async with await streams.stream_from("alice", 1, received):
        await users.notify("alice")
        assert await received.take(2) == ["reset@10", 11]


async def test_a_stream_yields_only_its_owners_messages(
    users: Users, streams: UserStreams, received: Received
) -> None:
    async with await streams.stream_from("alice", 0, received):
        await users.notify("bob", 2)
        await users.notify("alice")
        assert await received.take(1) == [1]
        assert await received.nothing_pending()


async def test_a_gap_holding_more_than_max_pending_ends_the_stream(users: Users) -> None:
    streams = UserStreams(users.cache, users.buffer, max_pending=3, gap_timeout=5.0)
    first, ended = Received(), Received()
    stream = await streams.stream_from("alice", 0, first, on_end=ended.end)
    try:
        appended = await users.append("alice", 5)
        await users.publish(*appended[1:])  # the first publish was lost: 4 held behind it
        assert stream.overflowed
        assert ended.ended
        assert first.items == []
    finally:
        await stream.close()
    again = Received()  # the browser reconnects and resumes from the buffer
    async with await streams.stream_from("alice", 0, again):
        assert await again.take(5) == [1, 2, 3, 4, 5]


async def test_a_buffer_error_while_filling_a_gap_ends_the_stream(users: Users) -> None:
    async def failing() -> Reset:
        raise ConnectionError("cache down")

    streams = UserStreams(users.cache, GapReads(users.cache, failing), gap_timeout=0.01)
    received, ended = Received(), Received()
    async with await streams.stream_from("alice", 0, received, on_end=ended.end):
        _, second = await users.append("alice", 2)
        await users.publish(second)
        await ended.until_ended()
        assert received.items == []


async def test_after_close_nothing_is_delivered(
    users: Users, streams: UserStreams, received: Received
) -> None:
    stream = await streams.stream_from("alice", 0, received)
    await users.notify("alice")
    assert await received.take(1) == [1]
    await stream.close()
    await users.notify("alice")
    assert await received.nothing_pending()


async def test_a_waiting_stream_holds_no_task(
    users: Users, streams: UserStreams, received: Received
) -> None:
    tasks_before = len(asyncio.all_tasks())
    async with await streams.stream_from("alice", 0, received):
        await users.notify("alice", 2)
        assert await received.take(2) == [1, 2]
        assert len(asyncio.all_tasks()) == tasks_before


async def test_the_message_that_closes_a_full_gap_releases_it_rather_than_overflowing(
    users: Users, received: Received
) -> None:
    streams = UserStreams(users.cache, users.buffer, max_pending=3, gap_timeout=5.0)
    async with await streams.stream_from("alice", 0, received) as stream:
        first, *rest = await users.append("alice", 4)
        await users.publish(*rest)  # three held behind the first: the bound
        await users.publish(first)
        assert await received.take(4) == [1, 2, 3, 4]
        assert not stream.overflowed


async def test_a_gap_read_answered_after_live_arrivals_closed_the_gap_changes_nothing(
    users: Users, received: Received
) -> None:
    reading, answer = asyncio.Event(), asyncio.Event()

    async def slow() -> Reset:
        """Waits until told, then says Reset (as if the buffer had lost ids)."""
        reading.set()
        await answer.wait()
        return Reset(1)

    streams = UserStreams(users.cache, GapReads(users.cache, slow), gap_timeout=0.01)
    async with await streams.stream_from("alice", 0, received):
        first, second, third = await users.append("alice", 3)
        await users.publish(second, third)
        await asyncio.wait_for(reading.wait(), 5.0)
        await users.publish(first)  # the gap closes while its read is in flight
        assert await received.take(3) == [1, 2, 3]
        answer.set()
        await users.notify("alice")
        assert await received.take(1) == [4]
        assert await received.nothing_pending()


async def test_closing_during_a_gap_read_delivers_nothing_more(
    users: Users, received: Received
) -> None:
    reading = asyncio.Event()

    async def stuck() -> Reset:
        reading.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    streams = UserStreams(users.cache, GapReads(users.cache, stuck), gap_timeout=0.01)
    stream = await streams.stream_from("alice", 0, received)
    _, second = await users.append("alice", 2)
    await users.publish(second)
    await asyncio.wait_for(reading.wait(), 5.0)
    tasks = len(asyncio.all_tasks())
    await stream.close()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks - 1  # the read was cancelled
    assert received.items == []


async def test_a_failing_deliver_ends_the_stream(users: Users) -> None:
    ended = Received()

    def deliver(item: StreamItem) -> None:
        raise RuntimeError("the client is gone")

    streams = UserStreams(users.cache, users.buffer)
    async with await streams.stream_from("alice", None, deliver, on_end=ended.end):
        await ended.until_ended()


async def test_more_early_arrivals_than_max_pending_end_the_stream_while_it_opens(
    users: Users, received: Received
) -> None:
    class Late(ReplayBuffer):
        """Five messages arrive after the subscription, before the buffer is read."""

        async def since(self, owner: str, last_id: int) -> Resume | Reset:
            await users.notify(owner, 5)
            return await super().since(owner, last_id)

    ended = Received()
    streams = UserStreams(users.cache, Late(users.cache, capacity=8, ttl=300.0), max_pending=3)
    async with await streams.stream_from("alice", 0, received, on_end=ended.end) as stream:
        assert stream.overflowed
        assert ended.ended
        assert received.items == []


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

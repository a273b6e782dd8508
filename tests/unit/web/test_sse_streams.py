"""SSE streams: conflated quotes, user events that are never dropped, one upstream price
subscription per symbol per process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest
from starlette.types import Message

from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import LocalSubscription, MessageCallback
from tradeloom.web.sse import HEARTBEAT, SLOT_SECONDS, ClientStream, StreamHub, sse_frame


async def frames(stream: ClientStream) -> AsyncIterator[bytes]:
    """The body chunks the stream's response writes, one by one, until the stream ends."""
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def send(message: Message) -> None:
        assert message["type"] == "http.response.body"
        assert message["more_body"]
        chunks.put_nowait(message["body"])

    async def write() -> None:
        try:
            await stream.write_to(send)
        finally:
            chunks.put_nowait(None)

    writer = asyncio.create_task(write())
    try:
        while (chunk := await chunks.get()) is not None:
            yield chunk
    finally:
        writer.cancel()


async def next_chunk(chunks: AsyncIterator[bytes], within: float = 1.0) -> bytes:
    return await asyncio.wait_for(anext(chunks), within)


async def test_the_snapshot_goes_first_then_user_events_in_order() -> None:
    stream = ClientStream("alice", ["AAPL"])
    stream.offer_user_frame(b"five\n\n")
    stream.start_with([sse_frame(b"{}", event="snapshot")])
    stream.offer_user_frame(b"six\n\n")
    chunk = await next_chunk(frames(stream))
    assert chunk == b"event: snapshot\ndata: {}\n\n" + b"five\n\n" + b"six\n\n"


async def test_quotes_are_conflated_latest_wins() -> None:
    stream = ClientStream("alice", ["AAPL"])
    stream.offer_quote("AAPL", sse_frame(b'{"bid":"1"}', event="quote"))
    stream.offer_quote("AAPL", sse_frame(b'{"bid":"2"}', event="quote"))
    chunk = await next_chunk(frames(stream))
    assert chunk == b'event: quote\ndata: {"bid":"2"}\n\n'
    assert stream.quotes_conflated == 1


async def test_user_events_are_never_dropped_an_overflowing_stream_closes() -> None:
    stream = ClientStream("alice", [], max_user_events=3)
    for event_id in range(1, 5):
        stream.offer_user_frame(b"e%d\n\n" % event_id)
    assert stream.overflowed
    received = [chunk async for chunk in frames(stream)]
    assert received == []  # closed: the client reconnects and resumes from the buffer


async def test_a_heartbeat_goes_out_only_when_nothing_else_does() -> None:
    stream = ClientStream("alice", [])
    stream.offer_heartbeat()
    chunks = frames(stream)
    assert await next_chunk(chunks) == HEARTBEAT
    stream.offer_heartbeat()
    stream.offer_user_frame(b"e1\n\n")
    assert await next_chunk(chunks) == b"e1\n\n"


class CountingCache(MemoryCache):
    """The memory cache, counting subscriptions opened and still open per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: dict[str, int] = {}

    async def subscribe(self, channel: str, callback: MessageCallback) -> LocalSubscription:
        self.opened[channel] = self.opened.get(channel, 0) + 1
        return await super().subscribe(channel, callback)


def quote_of(message: bytes) -> tuple[str, bytes] | None:
    updates = msgspec.json.decode(message)
    if not updates:
        return None
    newest = updates[-1]
    return newest["symbol"], msgspec.json.encode(newest)


def price_hub(
    cache: MemoryCache,
    *,
    quotes_per_second: float,
    slot_seconds: float = SLOT_SECONDS,
    heartbeat: float = 15.0,
) -> StreamHub:
    """A hub on ``cache``'s ``prices:<symbol>`` channels, with the tick, slots and heartbeat
    a test asks for."""
    return StreamHub(
        cache,
        price_channel="prices:{}".format,
        quote_from_message=quote_of,
        quotes_per_second=quotes_per_second,
        slot_seconds=slot_seconds,
        heartbeat=heartbeat,
    )


@pytest.fixture
async def hub_and_cache() -> AsyncIterator[tuple[StreamHub, CountingCache]]:
    cache = CountingCache()
    hub = price_hub(cache, quotes_per_second=50, heartbeat=0.1)
    await hub.start()
    yield hub, cache
    await hub.stop()


async def test_many_streams_share_one_upstream_subscription_per_channel(
    hub_and_cache: tuple[StreamHub, CountingCache],
) -> None:
    hub, cache = hub_and_cache
    streams = [ClientStream("alice", ["AAPL"]) for _ in range(3)] + [
        ClientStream("bob", ["AAPL", "MSFT"])
    ]
    for stream in streams:
        await hub.open(stream)
    assert cache.opened == {"prices:AAPL": 1, "prices:MSFT": 1}

    for stream in streams:
        await hub.close(stream)
    await cache.publish("prices:AAPL", b'[{"symbol":"AAPL","bid":"1"}]')
    assert hub.streams == 0
    assert hub.latest_quote("AAPL") is None  # nobody listens upstream any more


async def test_quotes_reach_every_stream_watching_the_symbol_and_no_other(
    hub_and_cache: tuple[StreamHub, CountingCache],
) -> None:
    hub, cache = hub_and_cache
    apple, microsoft = ClientStream("alice", ["AAPL"]), ClientStream("bob", ["MSFT"])
    await hub.open(apple)
    await hub.open(microsoft)
    await cache.publish("prices:AAPL", b'[{"symbol":"AAPL","bid":"1"},{"symbol":"AAPL","bid":"2"}]')
    chunk = await next_chunk(frames(apple))
    assert chunk == sse_frame(b'{"symbol":"AAPL","bid":"2"}', event="quote")
    # MSFT never changed: the first thing its stream sends is the hub's heartbeat (a quote
    # offered to it would go out first, and a heartbeat only goes out alone).
    assert await next_chunk(frames(microsoft), within=2.0) == HEARTBEAT
    assert hub.latest_quote("MSFT") is None


async def test_quotes_keep_flowing_after_the_last_watcher_left_and_a_new_one_came(
    hub_and_cache: tuple[StreamHub, CountingCache],
) -> None:
    hub, cache = hub_and_cache
    first = ClientStream("alice", ["AAPL"])
    await hub.open(first)
    await cache.publish("prices:AAPL", b'[{"symbol":"AAPL","bid":"1"}]')
    await hub.close(first)  # before the tick: the symbol's quote is forgotten
    second = ClientStream("alice", ["AAPL"])
    await hub.open(second)
    await asyncio.sleep(0.05)  # ticks pass over the forgotten symbol
    await cache.publish("prices:AAPL", b'[{"symbol":"AAPL","bid":"2"}]')
    chunk = await next_chunk(frames(second))
    assert chunk == sse_frame(b'{"symbol":"AAPL","bid":"2"}', event="quote")


async def test_closing_every_stream_ends_their_responses(
    hub_and_cache: tuple[StreamHub, CountingCache],
) -> None:
    hub, _ = hub_and_cache
    streams = [ClientStream("alice", ["AAPL"]), ClientStream("bob", [])]
    for stream in streams:
        await hub.open(stream)
    hub.close_streams()
    for stream in streams:
        assert [chunk async for chunk in frames(stream)] == []


async def test_a_symbol_reaches_a_stream_at_most_once_a_tick(
    hub_and_cache: tuple[StreamHub, CountingCache],
) -> None:
    hub, cache = hub_and_cache
    stream = ClientStream("alice", ["AAPL"])
    await hub.open(stream)
    for bid in range(1, 6):  # five quotes inside one 20 ms tick: the newest goes out
        await cache.publish("prices:AAPL", b'[{"symbol":"AAPL","bid":"%d"}]' % bid)
    chunk = await next_chunk(frames(stream))
    assert chunk == sse_frame(b'{"symbol":"AAPL","bid":"5"}', event="quote")


async def test_the_hub_sends_heartbeats_to_silent_streams(
    hub_and_cache: tuple[StreamHub, CountingCache],
) -> None:
    hub, _ = hub_and_cache
    stream = ClientStream("alice", ["AAPL"])
    await hub.open(stream)
    assert await next_chunk(frames(stream), within=2.0) == HEARTBEAT


async def test_a_stream_closed_while_the_hub_is_busy_is_gone_even_if_its_close_is_cancelled(
    hub_and_cache: tuple[StreamHub, CountingCache],
) -> None:
    hub, _ = hub_and_cache
    stream = ClientStream("alice", ["AAPL"])
    await hub.open(stream)
    async with hub._lock:  # another stream is subscribing upstream right now
        closing = asyncio.create_task(hub.close(stream))
        await asyncio.sleep(0)
        closing.cancel()  # the client went away: its clean-up is cancelled
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    assert hub.streams == 0


async def test_a_tick_is_spread_over_slots_so_its_streams_are_served_apart() -> None:
    """Not one burst of writes a tick: each slot of streams gets the quote at its own time,
    every stream within the tick, and the slots stay even as streams come and go."""
    cache = MemoryCache()
    hub = price_hub(cache, quotes_per_second=2, slot_seconds=0.1)  # a 0.5 s tick, five slots
    await hub.start()
    try:
        assert hub.slots == 5
        streams = [ClientStream(f"user{n}", ["AAPL"]) for n in range(10)]
        for stream in streams:
            await hub.open(stream)
        assert sorted(s.slot for s in streams) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        await hub.close(streams.pop(2))  # slot 2 now holds one stream less than the others
        late = ClientStream("late", ["AAPL"])
        await hub.open(late)
        streams.append(late)
        assert late.slot == 2  # the emptiest slot

        loop = asyncio.get_running_loop()
        await cache.publish("prices:AAPL", b'[{"symbol":"AAPL","bid":"1"}]')
        published = loop.time()

        async def arrival(stream: ClientStream) -> float:
            await next_chunk(frames(stream), within=2.0)
            return loop.time() - published

        arrivals = await asyncio.gather(*(arrival(stream) for stream in streams))
        assert max(arrivals) < 0.5 + 0.5  # every stream within the tick (and slack for the CI)
        assert max(arrivals) - min(arrivals) >= 0.25  # not all at once: a slot at a time
        by_slot: dict[int, list[float]] = {}
        for stream, at in zip(streams, arrivals, strict=True):
            by_slot.setdefault(stream.slot, []).append(at)
        for times in by_slot.values():  # a slot's streams are served together
            assert max(times) - min(times) < 0.08
    finally:
        await hub.stop()


async def test_a_stream_gets_every_symbol_that_changed_in_one_chunk_a_turn() -> None:
    """However many streams a turn serves (here more than a slice between yields, of any
    size so far), each writes what changed for it as one chunk, not one chunk per symbol."""
    cache = MemoryCache()
    hub = price_hub(cache, quotes_per_second=2, slot_seconds=0.5)  # one slot: all in one turn
    await hub.start()
    try:
        streams = [ClientStream(f"user{n}", ["AAPL", "MSFT"]) for n in range(1100)]
        for stream in streams:
            await hub.open(stream)
        await cache.publish("prices:AAPL", b'[{"symbol":"AAPL","bid":"1"}]')
        await cache.publish("prices:MSFT", b'[{"symbol":"MSFT","bid":"2"}]')
        both = sse_frame(b'{"symbol":"AAPL","bid":"1"}', event="quote") + sse_frame(
            b'{"symbol":"MSFT","bid":"2"}', event="quote"
        )
        chunks = await asyncio.gather(*(next_chunk(frames(s), within=2.0) for s in streams))
        assert set(chunks) == {both}
    finally:
        await hub.stop()


async def test_every_slot_brings_heartbeats_to_its_silent_streams() -> None:
    cache = MemoryCache()
    hub = price_hub(cache, quotes_per_second=2, slot_seconds=0.1, heartbeat=0.3)
    await hub.start()
    try:
        streams = [ClientStream(f"user{n}", ["AAPL"]) for n in range(hub.slots)]
        for stream in streams:
            await hub.open(stream)
        assert {stream.slot for stream in streams} == set(range(hub.slots))
        beats = await asyncio.gather(*(next_chunk(frames(s), within=3.0) for s in streams))
        assert beats == [HEARTBEAT] * hub.slots
    finally:
        await hub.stop()


class LateMessageCache(MemoryCache):
    """A cache whose subscriptions deliver one more message while they close, as the Redis
    pub/sub hub can while it waits for its lock."""

    async def subscribe(self, channel: str, callback: MessageCallback) -> LocalSubscription:
        inner = await super().subscribe(channel, callback)

        class ClosingLate:
            async def close(self) -> None:
                callback(channel, b'[{"symbol":"AAPL","bid":"stale"}]')
                await inner.close()

        return ClosingLate()


async def test_a_quote_arriving_while_its_symbol_is_dropped_is_never_offered_later() -> None:
    cache = LateMessageCache()
    hub = price_hub(cache, quotes_per_second=50, heartbeat=0.1)
    await hub.start()
    try:
        first = ClientStream("alice", ["AAPL"])
        await hub.open(first)
        await hub.close(first)  # the last watcher leaves; a message comes in as it closes
        assert hub.latest_quote("AAPL") is None
        later = ClientStream("bob", ["AAPL"])
        await hub.open(later)
        assert await next_chunk(frames(later), within=2.0) == HEARTBEAT  # not the stale quote
    finally:
        await hub.stop()

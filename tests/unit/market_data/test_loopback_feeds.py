"""Each feed's loopback server and client, end to end: delivery, malformed input, reconnects.

The simulator's clock is fixed, the seed too; nothing sleeps to wait for a condition, every
wait polls with a deadline (``wait_until``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import simplefix  # type: ignore[import-untyped]

from tests.unit.market_data.helpers import T0, Collector, ticks, wait_until
from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.exchange import Drop, RawFrame, TickHub, pump
from tradeloom.market_data.feeds.base import Backoff
from tradeloom.market_data.feeds.fix import FixFeed, FixServer
from tradeloom.market_data.feeds.fix_codec import new_message
from tradeloom.market_data.feeds.json_ws import JsonWsFeed, JsonWsServer
from tradeloom.market_data.feeds.rest_poll import RestPollFeed, RestSnapshotServer
from tradeloom.market_data.simulator import Quote, Tick, Trade

FAST_RETRY = Backoff(initial=0.01, maximum=0.05)


def quotes_of(items: Sequence[Tick]) -> list[tuple[str, Decimal, Decimal]]:
    return [(t.symbol, t.bid, t.ask) for t in items if isinstance(t, Quote)]


def trades_of(items: Sequence[Tick]) -> list[tuple[str, Decimal, Decimal]]:
    return [(t.symbol, t.price, t.size) for t in items if isinstance(t, Trade)]


def quote_part(updates: Sequence[PriceUpdate]) -> list[tuple[str, Any, Any]]:
    return [(u.symbol, u.bid, u.ask) for u in updates if u.bid is not None]


def trade_part(updates: Sequence[PriceUpdate]) -> list[tuple[str, Any, Any]]:
    return [(u.symbol, u.last, u.volume) for u in updates if u.last is not None]


def fix_bad_price() -> bytes:
    message = new_message("X", "SIMX", "TRADELOOM", 999, T0)
    for tag, value in ((268, 1), (279, 0), (269, 0), (55, "AAPL"), (270, "abc")):
        message.append_pair(tag, value)
    return bytes(message.encode())


@dataclass
class Loop:
    """A hub, a started server and a running feed client."""

    hub: TickHub
    server: Any
    feed: JsonWsFeed | FixFeed
    collector: Collector
    malformed_frames: tuple[bytes, ...]


@pytest.fixture(params=["json_ws", "fix"])
async def streaming(request: pytest.FixtureRequest) -> AsyncIterator[Loop]:
    hub = TickHub()
    server: JsonWsServer | FixServer
    feed: JsonWsFeed | FixFeed
    if request.param == "json_ws":
        server = JsonWsServer(hub)
        await server.start()
        feed = JsonWsFeed(server.url, backoff=FAST_RETRY)
        bad: tuple[bytes, ...] = (b'[{"T":"q","S":"AAPL","bp":"NaN"}]', b"\xff\x00 not json")
    else:
        server = FixServer(hub)
        await server.start()
        feed = FixFeed(*server.address, backoff=FAST_RETRY)
        bad = (fix_bad_price(), b"garbage without tags\x01")
    collector = Collector(feed.updates())
    await wait_until(lambda: hub.subscribers == 1, f"the {feed.name} client to subscribe")
    yield Loop(hub, server, feed, collector, bad)
    await collector.stop()
    await server.stop()


async def test_streaming_feeds_deliver_every_simulated_tick_in_order(streaming: Loop) -> None:
    sent = ticks(400)
    await pump(iter(sent), streaming.hub, rate=None)
    want_quotes, want_trades = quotes_of(sent), trades_of(sent)
    got = streaming.collector.updates
    await wait_until(
        lambda: (
            len(quote_part(got)) == len(want_quotes) and len(trade_part(got)) == len(want_trades)
        ),
        f"{len(sent)} ticks through {streaming.feed.name}",
    )
    assert quote_part(got) == want_quotes
    assert trade_part(got) == want_trades
    assert all(u.exchange_time == T0 and u.venue == "SIMX" for u in got)
    assert streaming.feed.counters.malformed == 0


async def test_malformed_messages_are_skipped_and_a_drop_reconnects(streaming: Loop) -> None:
    hub, feed, got = streaming.hub, streaming.feed, streaming.collector.updates
    first, second = ticks(300)[:150], ticks(300)[150:]
    await pump(iter(first[:75]), hub, rate=None)
    for frame in streaming.malformed_frames:
        hub.publish(RawFrame(frame))
    await pump(iter(first[75:]), hub, rate=None)
    await wait_until(
        lambda: (
            len(quote_part(got)) == len(quotes_of(first))
            and len(trade_part(got)) == len(trades_of(first))
        ),
        "the updates before the drop",
    )
    before = len(got)
    hub.publish(Drop())
    await wait_until(lambda: feed.counters.reconnects == 1, "a reconnect after the drop")
    await wait_until(lambda: hub.subscribers == 1, "the client to subscribe again")
    await pump(iter(second), hub, rate=None)
    await wait_until(
        lambda: len(trade_part(got)) == len(trades_of(first + second)), "the updates after it"
    )
    assert feed.counters.malformed == len(streaming.malformed_frames)
    assert trade_part(got) == trades_of(first + second)
    after = quote_part(got[before:])
    if isinstance(feed, FixFeed):  # a FIX server restates its book on logon (35=W)
        latest = {symbol: (symbol, bid, ask) for symbol, bid, ask in quotes_of(first)}
        assert sorted(after[: len(latest)]) == sorted(latest.values())
        after = after[len(latest) :]
    assert quote_part(got[:before]) == quotes_of(first)
    assert after == quotes_of(second)


async def test_the_fix_parser_recovers_from_garbage_between_messages() -> None:
    parser = simplefix.FixParser()
    feed = FixFeed("127.0.0.1", 1)
    good = new_message("X", "SIMX", "TRADELOOM", 1, T0)
    for tag, value in ((268, 1), (279, 0), (269, 2), (55, "KO"), (270, "60.21"), (271, 100)):
        good.append_pair(tag, value)
    parser.append_buffer(good.encode() + b"\x01junk==\x01" + good.encode())
    updates = feed._drain(parser)
    assert [u.last for u in updates] == [Decimal("60.21"), Decimal("60.21")]
    assert feed.counters.malformed == 1


def final_state(items: Sequence[Tick]) -> tuple[dict[str, Any], dict[str, Decimal]]:
    quotes = {t.symbol: (t.bid, t.ask) for t in items if isinstance(t, Quote)}
    volume: dict[str, Decimal] = defaultdict(Decimal)
    for t in items:
        if isinstance(t, Trade):
            volume[t.symbol] += t.size
    return quotes, dict(volume)


def seen_state(updates: Sequence[PriceUpdate]) -> tuple[dict[str, Any], dict[str, Decimal]]:
    quotes = {u.symbol: (u.bid, u.ask) for u in updates if u.bid is not None}
    volume: dict[str, Decimal] = defaultdict(Decimal)
    for u in updates:
        if u.last is not None:
            volume[u.symbol] += u.volume
    return quotes, dict(volume)


async def test_the_rest_poller_converges_skips_bad_bodies_and_survives_outages() -> None:
    hub = TickHub()
    server = RestSnapshotServer(hub)
    await server.start()
    feed = RestPollFeed(server.url, interval=0.01, backoff=FAST_RETRY)
    collector = Collector(feed.updates())
    try:
        await wait_until(lambda: feed.counters.connected, "the poller's baseline poll")
        sent = ticks(600)
        await pump(iter(sent[:300]), hub, rate=None)
        await wait_until(
            lambda: seen_state(collector.updates) == final_state(sent[:300]), "REST convergence"
        )
        hub.publish(RawFrame(b"<html>502 Bad Gateway</html>"))
        await wait_until(lambda: feed.counters.malformed == 1, "the bad body to be counted")
        hub.publish(Drop())  # the next poll gets a 503
        await wait_until(lambda: feed.counters.reconnects == 1, "a retry after the 503")
        await server.stop()  # connection refused until it is back
        await wait_until(lambda: feed.counters.reconnects >= 2, "a retry while the server is down")
        await server.start()
        await pump(iter(sent[300:]), hub, rate=None)
        await wait_until(
            lambda: seen_state(collector.updates) == final_state(sent), "convergence after outages"
        )
    finally:
        await collector.stop()
        await server.stop()

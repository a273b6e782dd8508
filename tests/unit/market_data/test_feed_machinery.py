"""The machinery every feed shares: backoff, the retry loop, malformed logging, hub and pump."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from tests.unit.market_data.helpers import T0, ticks
from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.exchange import TickHub, pump
from tradeloom.market_data.feeds.base import Backoff, FeedCounters, reconnecting, skip_malformed
from tradeloom.market_data.normalize import MalformedMessage, truncated


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(initial=0.1, maximum=0.5)
    assert [backoff.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next_delay() == 0.1


def test_raw_bytes_in_logs_are_truncated_and_escaped() -> None:
    assert truncated(b"x" * 500) == "x" * 200 + "…"
    assert truncated(b"\xff\x00ok") == "\\xff\x00ok"


def test_a_malformed_message_is_counted_and_logged_with_its_raw_bytes() -> None:
    counters = FeedCounters()
    with capture_logs() as logs:
        skip_malformed("json_ws", counters, b"{" * 300, MalformedMessage("bad"))
    assert counters.malformed == 1
    (entry,) = logs
    assert entry["event"] == "malformed_market_data"
    assert entry["feed"] == "json_ws"
    assert entry["error"] == "bad"
    assert entry["raw"] == "{" * 200 + "…"


async def test_the_retry_loop_backs_off_between_failures_and_resets_after_success() -> None:
    update = PriceUpdate(
        symbol="KO", bid=Decimal(1), ask=None, last=None, volume=Decimal(0),
        exchange_time=T0, venue="SIMX",
    )  # fmt: skip
    script = iter(["fail", "fail", "deliver", "fail", "deliver"])
    delays: list[float] = []

    async def session() -> AsyncIterator[PriceUpdate]:
        if next(script) == "fail":
            raise ConnectionRefusedError("refused")
        yield update

    async def record(delay: float) -> None:
        delays.append(delay)

    counters = FeedCounters()
    loop = reconnecting(
        "test", session, counters, Backoff(initial=1, maximum=8), retry_on=(OSError,), sleep=record
    )
    received = [await anext(loop), await anext(loop)]
    await loop.aclose()  # type: ignore[attr-defined]
    assert received == [update, update]
    assert delays == [1, 2, 1, 2]  # back to the initial delay after the delivering session
    assert (counters.reconnects, counters.updates) == (4, 2)


async def test_errors_that_are_not_connection_failures_propagate() -> None:
    async def session() -> AsyncIterator[PriceUpdate]:
        raise KeyError("a bug")
        yield  # pragma: no cover

    loop = reconnecting("test", session, FeedCounters(), Backoff(), retry_on=(OSError,))
    with pytest.raises(KeyError):
        await anext(loop)


async def test_a_full_subscriber_queue_misses_ticks_without_blocking_the_hub() -> None:
    hub = TickHub(queue_size=5)
    async with hub.subscribe() as slow, hub.subscribe() as other:
        sent = await pump(iter(ticks(8)), hub, rate=None)
        assert (sent, slow.qsize(), other.qsize(), hub.dropped) == (8, 5, 5, 6)
    assert hub.subscribers == 0


async def test_the_pump_follows_its_schedule() -> None:
    now = [0.0]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        await asyncio.sleep(0)

    sent = await pump(
        iter(ticks(1000)), TickHub(), rate=500.0, timer=lambda: now[0], sleep=sleep, limit=1000
    )
    assert sent == 1000
    assert now[0] == pytest.approx(999 / 500, abs=0.01)  # paced every 5 ticks, never ahead
    assert all(delay >= 0 for delay in sleeps)

"""Feed benchmark: how many updates per second each wire format delivers, normalized.

    python bench/market_feeds.py                 # 50,000 ticks per format
    python bench/market_feeds.py --ticks 200000

For each streaming format (JSON over WebSocket, FIX over TCP) the simulator's ticks go through
the loopback server and the feed client, on this one event loop, as fast as they can; the rate
is ticks per second from the first tick published to the last ``PriceUpdate`` yielded. The
generator alone (simulator) and the normalizers alone (pre-encoded messages) are measured too,
to show where the time goes. The bus, cache and candles are not involved (see
``bench/market_data.py`` for the whole path).

Figures on the 2-core machine (30,000 ticks, noisy, other work running):

    simulator               ~100-180k ticks/s
    json normalizer         ~160-270k ticks/s
    fix parser+normalize     ~12k ticks/s
    json_ws end to end       ~75-100k ticks/s
    fix end to end           ~8k ticks/s

FIX is bound by simplefix's pure-Python parser (it walks the buffer byte by byte, ~1 MB/s),
so one FIX session carries about 8-12k ticks/s here; a 20k/s end-to-end target is met with the
JSON feed, or with several FIX sessions in separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import simplefix  # type: ignore[import-untyped]
import structlog

from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.time import ManualClock
from tradeloom.market_data.exchange import TickHub, pump
from tradeloom.market_data.feeds.base import Feed
from tradeloom.market_data.feeds.fix import FixFeed, FixServer
from tradeloom.market_data.feeds.fix_codec import (
    add_incremental_entries,
    new_message,
    normalize_fix,
)
from tradeloom.market_data.feeds.json_ws import JsonWsFeed, JsonWsServer, encode_tick, split_frame
from tradeloom.market_data.feeds.json_ws import normalize_message as normalize_json
from tradeloom.market_data.simulator import Quote, SimulationSettings, Simulator, Tick
from tradeloom.market_data.universe import default_universe

START = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
END_MARKER = Quote("ZZZZ", Decimal(1), Decimal(1), Decimal("1.01"), Decimal(1), START, "SIMX")


def make_ticks(count: int) -> tuple[list[Tick], float]:
    clock = ManualClock(START)
    simulator = Simulator(default_universe(), clock, SimulationSettings(seed=1))
    started = time.perf_counter()
    produced = list(itertools.islice(simulator.ticks(), count))
    return produced, count / (time.perf_counter() - started)


def json_normalizer_rate(produced: list[Tick]) -> float:
    frames = [
        msgspec.json.encode([encode_tick(t) for t in produced[i : i + 200]])
        for i in range(0, len(produced), 200)
    ]
    started = time.perf_counter()
    for frame in frames:
        for raw in split_frame(frame):
            normalize_json(raw, "SIMX")
    return len(produced) / (time.perf_counter() - started)


def fix_client_rate(produced: list[Tick]) -> float:
    """simplefix parsing plus normalization of pre-encoded incrementals (50 ticks each)."""
    wire = bytearray()
    for seq, i in enumerate(range(0, len(produced), 50), start=1):
        message = new_message("X", "SIMX", "TRADELOOM", seq, START)
        add_incremental_entries(message, produced[i : i + 50])
        wire += message.encode()
    parser = simplefix.FixParser()
    started = time.perf_counter()
    for i in range(0, len(wire), 65536):
        parser.append_buffer(bytes(wire[i : i + 65536]))
        while (message := parser.get_message()) is not None:
            normalize_fix(message, "SIMX")
    return len(produced) / (time.perf_counter() - started)


async def through_feed(wire: str, produced: list[Tick]) -> float:
    """Ticks per second through server and client; an end-marker quote closes the run."""
    hub = TickHub(queue_size=len(produced) + 10)
    server: JsonWsServer | FixServer
    feed: Feed
    if wire == "json_ws":
        server = JsonWsServer(hub)
        await server.start()
        feed = JsonWsFeed(server.url)
    else:
        server = FixServer(hub)
        await server.start()
        feed = FixFeed(*server.address)
    reader = asyncio.create_task(_until_end_marker(feed.updates()))
    while hub.subscribers == 0:  # noqa: ASYNC110 (the hub has no subscription event)
        await asyncio.sleep(0.001)
    started = time.perf_counter()
    await pump(iter([*produced, END_MARKER]), hub, rate=None)
    await reader
    elapsed = time.perf_counter() - started
    await server.stop()
    if hub.dropped:
        raise RuntimeError(f"{hub.dropped} ticks dropped: the run is not valid")
    return len(produced) / elapsed


async def _until_end_marker(updates: AsyncIterator[PriceUpdate]) -> None:
    async for update in updates:
        if update.symbol == END_MARKER.symbol:
            break
    await updates.aclose()  # type: ignore[attr-defined]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=50_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    produced, simulated = make_ticks(args.ticks)
    print(f"simulator            {simulated:>12,.0f} ticks/s")
    print(f"json normalizer      {json_normalizer_rate(produced):>12,.0f} ticks/s")
    print(f"fix parser+normalize {fix_client_rate(produced):>12,.0f} ticks/s")
    for wire in ("json_ws", "fix"):
        rate = await through_feed(wire, produced)
        print(f"{wire:<8} end to end     {rate:>12,.0f} ticks/s (server + client + normalize)")


if __name__ == "__main__":
    asyncio.run(main())

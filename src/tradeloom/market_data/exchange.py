"""The simulated exchange's distribution side: a broadcast hub and a paced pump.

The pump pulls ticks from a :class:`~tradeloom.market_data.simulator.Simulator` at a target
rate and publishes them to a :class:`TickHub`; each loopback feed server subscribes one queue
per client connection and encodes what it receives into its wire format. Tests also publish
:class:`RawFrame` (bytes sent verbatim, e.g. a malformed message) and :class:`Drop` (the
server closes the connection) through the same hub, so they arrive in order with the ticks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeAlias

from tradeloom.market_data.simulator import Tick


@dataclass(frozen=True, slots=True)
class RawFrame:
    """Bytes a server sends to its clients exactly as given."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    """Tells every server connection that receives it to close."""


HubItem: TypeAlias = Tick | RawFrame | Drop


class TickHub:
    """Broadcasts items to every subscriber, each through its own bounded queue.

    Publishing never blocks: a subscriber whose queue is full misses the item, and ``dropped``
    counts it (a slow client must not stall the exchange or the other clients).
    """

    def __init__(self, queue_size: int = 10_000) -> None:
        self._queue_size = queue_size
        self._queues: set[asyncio.Queue[HubItem]] = set()
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, item: HubItem) -> None:
        for queue in self._queues:
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped += 1

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[HubItem]]:
        """A queue receiving everything published while the block runs."""
        queue: asyncio.Queue[HubItem] = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


async def pump(
    ticks: Iterator[Tick],
    hub: TickHub,
    *,
    rate: float | None,
    limit: int | None = None,
    timer: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Publish ticks at ``rate`` per second (None: as fast as possible); return how many.

    Pacing follows a schedule from the start, so a slow iteration is caught up rather than
    accumulating drift. Ticks go out in bursts of about 10 ms worth (100 when unpaced), and the
    pump yields to the event loop after each burst, so servers get to send.
    """
    batch = max(1, int(rate // 100)) if rate else 100
    started = timer()
    sent = 0
    for tick in ticks:
        hub.publish(tick)
        sent += 1
        if limit is not None and sent >= limit:
            break
        if sent % batch == 0:
            ahead = sent / rate - (timer() - started) if rate else 0.0
            await sleep(max(ahead, 0.0))
    return sent

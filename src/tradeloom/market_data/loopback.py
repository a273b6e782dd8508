"""The simulated exchange on loopback: simulators, hubs, servers and the matching feed clients.

One object to start and stop for ``tradeloom market simulate``, the demo and the benchmark.
The universe is split round-robin between the wire formats, so every symbol is quoted by
exactly one feed: a print reaches the consumer once and candles never count it twice, while
all formats run side by side. Each format gets a share of ``rate`` in proportion to its
symbols.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from tradeloom.domain.market import Instrument
from tradeloom.domain.time import Clock
from tradeloom.market_data.exchange import TickHub, pump
from tradeloom.market_data.feeds.base import Backoff, Feed
from tradeloom.market_data.feeds.fix import FixFeed, FixServer
from tradeloom.market_data.feeds.json_ws import JsonWsFeed, JsonWsServer
from tradeloom.market_data.feeds.rest_poll import RestPollFeed, RestSnapshotServer
from tradeloom.market_data.simulator import SimulationSettings, Simulator

Wire = Literal["json_ws", "fix", "rest_poll"]
ALL_WIRES: tuple[Wire, ...] = ("json_ws", "fix", "rest_poll")

Server = JsonWsServer | FixServer | RestSnapshotServer


@dataclass
class _Venue:
    """One wire format's slice of the exchange."""

    wire: Wire
    simulator: Simulator
    hub: TickHub
    server: Server
    rate: float | None


class SimulatedExchange:
    """Starts a server per wire format fed by its own seeded simulator; hands out clients.

    ``rate`` is ticks per second over the whole universe (None: as fast as possible);
    ``limit`` stops each pump after that many ticks (None: run until ``stop``).
    """

    def __init__(
        self,
        universe: Sequence[Instrument],
        clock: Clock,
        settings: SimulationSettings,
        *,
        wires: Sequence[Wire] = ALL_WIRES,
        rate: float | None = None,
        limit: int | None = None,
        rest_interval: float = 0.5,
    ) -> None:
        if not wires or len(set(wires)) != len(wires):
            raise ValueError("name each wire format once")
        if len(universe) < len(wires):
            raise ValueError("the universe needs at least one symbol per wire format")
        self._rest_interval, self._limit = rest_interval, limit
        self._venues = [
            self._venue(wire, universe[index :: len(wires)], clock, settings, rate, len(universe))
            for index, wire in enumerate(wires)
        ]
        self._pumps: list[asyncio.Task[int]] = []

    @staticmethod
    def _venue(
        wire: Wire,
        symbols: Sequence[Instrument],
        clock: Clock,
        settings: SimulationSettings,
        rate: float | None,
        universe_size: int,
    ) -> _Venue:
        share = rate * len(symbols) / universe_size if rate else None
        seed = settings.seed + ALL_WIRES.index(wire)
        simulator = Simulator(
            symbols, clock, replace(settings, seed=seed, rate=share or settings.rate)
        )
        hub = TickHub()
        server: Server
        if wire == "json_ws":
            server = JsonWsServer(hub)
        elif wire == "fix":
            server = FixServer(hub, clock=clock)
        else:
            server = RestSnapshotServer(hub)
        return _Venue(wire, simulator, hub, server, share)

    async def start(self) -> None:
        """Start every server; ticks flow once :meth:`run` is called."""
        for venue in self._venues:
            await venue.server.start()

    def run(self) -> None:
        """Start pumping ticks into every hub (in background tasks)."""
        self._pumps = [
            asyncio.create_task(
                pump(venue.simulator.ticks(), venue.hub, rate=venue.rate, limit=self._limit)
            )
            for venue in self._venues
        ]

    async def stop(self) -> None:
        for task in self._pumps:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for venue in self._venues:
            await venue.server.stop()

    def hubs(self) -> dict[Wire, TickHub]:
        return {venue.wire: venue.hub for venue in self._venues}

    def feeds(self, backoff: Backoff | None = None) -> list[Feed]:
        """A fresh client for every started server (call after :meth:`start`)."""
        return [self._client(venue.server, backoff) for venue in self._venues]

    def _client(self, server: Server, backoff: Backoff | None) -> Feed:
        if isinstance(server, JsonWsServer):
            return JsonWsFeed(server.url, backoff=backoff)
        if isinstance(server, FixServer):
            return FixFeed(*server.address, backoff=backoff)
        return RestPollFeed(server.url, interval=self._rest_interval, backoff=backoff)

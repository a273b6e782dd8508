"""Bus fixtures for the contract suite: every test runs on the memory and the NATS adapter.

``bus_factory.new()`` returns a started bus; buses made by one factory share a broker (memory)
or a stream prefix (NATS), so two of them behave like two processes of one deployment.
``bus_factory.kill(bus)`` makes one vanish without acking or releasing anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.messaging.nats import NatsBus, delete_bus_streams

Bus = MemoryBus | NatsBus

PARTITIONS = 4


class BusFactory:
    def __init__(self, kind: str, nats_url: str | None, prefix: str) -> None:
        self.kind = kind
        self._nats_url = nats_url
        self._prefix = prefix
        self._broker = MemoryBroker(partitions=PARTITIONS)
        self._open: list[Bus] = []

    async def new(self, **options: Any) -> Bus:
        bus: Bus
        if self.kind == "memory":
            bus = MemoryBus(self._broker, keep_alive_every=0.1)
        else:
            assert self._nats_url is not None
            bus = NatsBus(
                self._nats_url,
                partitions=PARTITIONS,
                stream_prefix=self._prefix,
                lease_ttl=1.0,
                poll_interval=0.2,
                **options,
            )
        await bus.start()
        self._open.append(bus)
        return bus

    async def kill(self, bus: Bus) -> None:
        self._open.remove(bus)
        await bus.abort()

    async def close_all(self) -> None:
        buses, self._open = self._open, []
        for bus in buses:
            await bus.close()
        if self.kind == "nats":
            assert self._nats_url is not None
            await delete_bus_streams(self._nats_url, self._prefix)


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.nats)])
async def bus_factory(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[BusFactory]:
    nats_url = request.getfixturevalue("nats_url") if request.param == "nats" else None
    factory = BusFactory(request.param, nats_url, prefix=f"T{unique}")
    try:
        yield factory
    finally:
        await factory.close_all()

"""Stopping a NATS group member when a cancel arrives together with a reply.

On Python 3.11 ``asyncio.wait_for`` returns the awaited result instead of raising when the
task is cancelled after that result is set but before ``wait_for`` resumed; nats-py waits for
every request reply that way (the lease loop's). The lease loop and the partition workers must
end anyway, or ``stop``/``abort`` (and a test teardown) waits forever. The fakes below reply
the way nats-py does, and the tests cancel in exactly that window.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tradeloom.messaging.delivery import Delivery
from tradeloom.messaging.nats_consumer import PartitionWorker
from tradeloom.messaging.nats_lease import PartitionLeases
from tradeloom.messaging.port import ConsumerOptions


async def _reply_like_nats(reply: asyncio.Future[Any]) -> Any:
    return await asyncio.wait_for(reply, 5)  # what nats-py's Client.request awaits


class _Kv:
    """A lease bucket whose first ``update`` waits for a reply the test hands over."""

    def __init__(self) -> None:
        self.held: asyncio.Future[int] | None = None
        self.waiting = asyncio.Event()

    async def create(self, key: str, value: bytes) -> int:
        return 1

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.held is None:
            self.held = asyncio.get_running_loop().create_future()
            self.waiting.set()
            return int(await _reply_like_nats(self.held))
        return last + 1

    async def delete(self, key: str, last: int) -> None:
        return None


class _Js:
    async def stream_info(self, name: str, subjects_filter: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(subjects={subjects_filter: 1}))

    async def purge_stream(self, name: str, subject: str) -> None:
        return None


async def test_leases_stop_even_if_the_loop_swallows_its_cancellation() -> None:
    kv = _Kv()
    leases = PartitionLeases(
        js=_Js(),  # type: ignore[arg-type]
        kv=kv,  # type: ignore[arg-type]
        bucket="B",
        scope="topic.group",
        partitions=2,
        ttl=0.03,
        start_worker=lambda partition: None,
        stop_worker=lambda partition: None,
    )
    await leases.start()
    await kv.waiting.wait()  # the lease loop is waiting for a renewal's reply
    assert kv.held is not None
    kv.held.set_result(2)
    async with asyncio.timeout(3):
        await leases.stop()  # cancels the loop right now, before wait_for resumed

    assert leases.owned == frozenset()


class _Nc:
    """A NATS connection whose subscriber callback the test drives by hand."""

    def __init__(self) -> None:
        self.callback: Any = None
        self.requested = asyncio.Event()
        self.reply = ""
        self.unsubscribed = False

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        self.callback = cb

        async def unsubscribe() -> None:
            self.unsubscribed = True

        return SimpleNamespace(unsubscribe=unsubscribe)

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        self.reply = reply
        self.requested.set()


async def test_an_aborted_worker_ends_and_hands_over_nothing_that_arrives_with_the_abort() -> None:
    nc = _Nc()
    handled: list[Delivery] = []

    async def run(deliveries: list[Delivery]) -> None:
        handled.extend(deliveries)

    worker = PartitionWorker(
        nc=nc,  # type: ignore[arg-type]
        stream="S",
        durable="g_0",
        options=ConsumerOptions(),
        poll_interval=0.5,
        run=run,
    )
    await nc.requested.wait()  # the worker is waiting for the pulled message
    message = SimpleNamespace(
        subject=nc.reply,
        data=b"",
        headers={},
        metadata=SimpleNamespace(num_delivered=1),
        ack=None,
        in_progress=None,
    )
    await nc.callback(message)  # it arrives ...
    task = worker.abort()  # ... and the abort right with it, before the worker resumed
    async with asyncio.timeout(3):
        await asyncio.wait([task])

    assert handled == []  # an aborted member acks nothing more, like a crashed process
    assert nc.unsubscribed

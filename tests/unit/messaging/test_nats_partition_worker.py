"""PartitionWorker on a fake connection: it never moves past an unsettled event, and it waits
for the partition's previous worker of the same member."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tests.helpers import eventually
from tradeloom.messaging.delivery import Delivery
from tradeloom.messaging.nats_consumer import PartitionWorker
from tradeloom.messaging.port import ConsumerOptions


class Connection:
    def __init__(self) -> None:
        self.callback: Any = None
        self.subscribed = asyncio.Event()

    def new_inbox(self) -> str:
        return "_INBOX.w"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        self.callback = cb
        self.subscribed.set()

        async def unsubscribe() -> None:
            return None

        return SimpleNamespace(unsubscribe=unsubscribe, drain=unsubscribe)

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        return None

    async def deliver(self, label: str) -> None:
        await self.callback(_message(label))


def _message(label: str) -> Any:
    message = SimpleNamespace(
        subject="tl.order_events.0",
        data=label.encode(),
        headers={},
        metadata=SimpleNamespace(num_delivered=1),
        is_acked=False,
    )

    async def ack() -> None:
        message.is_acked = True

    async def in_progress() -> None:
        return None

    message.ack, message.in_progress = ack, in_progress
    return message


def worker(nc: Connection, run: Any, after: asyncio.Task[None] | None = None) -> PartitionWorker:
    return PartitionWorker(
        nc=nc,  # type: ignore[arg-type]
        stream="S",
        durable="g_0",
        options=ConsumerOptions(max_batch=1),
        poll_interval=0.2,
        run=run,
        after=after,
    )


async def test_a_failed_hand_over_is_retried_before_anything_later() -> None:
    nc = Connection()
    handed: list[str] = []
    failures = [RuntimeError("the dead letter could not be published")]

    async def run(deliveries: list[Delivery]) -> None:
        handed.extend(d.data.decode() for d in deliveries)
        if failures:
            raise failures.pop()
        for delivery in deliveries:
            await delivery.ack()

    partition = worker(nc, run)
    await nc.subscribed.wait()
    await nc.deliver("1")
    await nc.deliver("2")
    await eventually(lambda: handed == ["1", "1", "2"])
    await partition.stop()


async def test_a_worker_waits_for_the_partitions_previous_worker() -> None:
    nc = Connection()
    previous_done = asyncio.Event()
    previous = asyncio.create_task(previous_done.wait())

    async def run(deliveries: list[Delivery]) -> None:
        return None

    partition = worker(nc, run, after=previous)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not nc.subscribed.is_set()
    previous_done.set()
    await asyncio.wait_for(nc.subscribed.wait(), 1)
    await partition.stop()

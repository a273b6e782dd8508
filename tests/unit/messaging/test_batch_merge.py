"""MergedBatches: a group commit of the batches a member's partitions fetched."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import eventually
from tradeloom.messaging.batch_merge import MergedBatches
from tradeloom.messaging.delivery import Delivery


class Partition:
    """Deliveries of one partition that remember whether they were acked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.acked: list[str] = []

    def deliveries(self, *labels: str) -> list[Delivery]:
        return [self._delivery(f"{self.name}{label}") for label in labels]

    def _delivery(self, label: str) -> Delivery:
        async def ack() -> None:
            self.acked.append(label)

        async def keep_alive() -> None:
            return None

        return Delivery(label.encode(), self.name, 0, ack, keep_alive)


class Handler:
    """try_merged / run_alone doubles: records calls; the first merged call can be held."""

    def __init__(self) -> None:
        self.merged_calls: list[list[str]] = []
        self.alone_calls: list[list[str]] = []
        self.hold_first = asyncio.Event()
        self.hold_first.set()
        self.fail_when: str | None = None

    async def try_merged(self, deliveries: list[Delivery]) -> bool:
        labels = [d.data.decode() for d in deliveries]
        self.merged_calls.append(labels)
        if len(self.merged_calls) == 1:
            await self.hold_first.wait()
        if self.fail_when is not None and self.fail_when in labels:
            return False
        for delivery in deliveries:
            await delivery.ack()
        return True

    async def run_alone(self, deliveries: list[Delivery]) -> None:
        self.alone_calls.append([d.data.decode() for d in deliveries])
        for delivery in deliveries:
            await delivery.ack()


async def first_batch_held(
    handler: Handler, merged: MergedBatches, first: Partition
) -> asyncio.Task[None]:
    """Start ``first``'s batch and hold it in the handler, so the parts after it queue."""
    handler.hold_first.clear()
    running = asyncio.create_task(merged.run(first.deliveries("1")))
    await eventually(lambda: handler.merged_calls == [[f"{first.name}1"]])
    return running


async def test_what_queues_while_a_batch_is_in_flight_goes_in_one_call() -> None:
    handler = Handler()
    merged = MergedBatches(handler.try_merged, handler.run_alone, max_batch=100)
    a, b, c = Partition("a"), Partition("b"), Partition("c")

    first = await first_batch_held(handler, merged, a)
    rest = [
        asyncio.create_task(merged.run(b.deliveries("1", "2"))),
        asyncio.create_task(merged.run(c.deliveries("1"))),
    ]
    await asyncio.sleep(0)  # both parts queue behind the batch in flight
    handler.hold_first.set()
    await asyncio.gather(first, *rest)

    assert handler.merged_calls == [["a1"], ["b1", "b2", "c1"]]
    assert (a.acked, b.acked, c.acked) == (["a1"], ["b1", "b2"], ["c1"])
    assert handler.alone_calls == []


async def test_a_merged_batch_takes_whole_parts_up_to_max_batch() -> None:
    handler = Handler()
    merged = MergedBatches(handler.try_merged, handler.run_alone, max_batch=3)
    a, b, c = Partition("a"), Partition("b"), Partition("c")

    first = await first_batch_held(handler, merged, a)
    rest = [
        asyncio.create_task(merged.run(b.deliveries("1", "2"))),
        asyncio.create_task(merged.run(c.deliveries("1", "2"))),
    ]
    await asyncio.sleep(0)
    handler.hold_first.set()
    await asyncio.gather(first, *rest)

    assert handler.merged_calls == [["a1"], ["b1", "b2"], ["c1", "c2"]]


async def test_a_failed_merged_batch_goes_back_to_each_partition_alone() -> None:
    handler = Handler()
    handler.fail_when = "c1"
    merged = MergedBatches(handler.try_merged, handler.run_alone, max_batch=100)
    a, b, c = Partition("a"), Partition("b"), Partition("c")

    first = await first_batch_held(handler, merged, a)
    rest = [
        asyncio.create_task(merged.run(b.deliveries("1"))),
        asyncio.create_task(merged.run(c.deliveries("1"))),
    ]
    await asyncio.sleep(0)
    handler.hold_first.set()
    await asyncio.gather(first, *rest)

    assert handler.merged_calls == [["a1"], ["b1", "c1"]]
    assert sorted(handler.alone_calls) == [["b1"], ["c1"]]
    assert b.acked == ["b1"]
    assert c.acked == ["c1"]


async def test_an_error_that_is_not_the_handlers_reaches_every_parts_worker() -> None:
    alone: list[list[str]] = []

    async def ack_fails(deliveries: list[Delivery]) -> bool:
        raise ConnectionError("the ack could not be sent")

    async def run_alone(deliveries: list[Delivery]) -> None:
        alone.append([d.data.decode() for d in deliveries])

    merged = MergedBatches(ack_fails, run_alone, max_batch=10)
    with pytest.raises(ConnectionError):
        await merged.run(Partition("a").deliveries("1"))
    assert alone == []  # the worker retries its part in place; the handler is not re-run here


async def test_a_part_queued_behind_a_slow_batch_is_kept_alive() -> None:
    handler = Handler()
    merged = MergedBatches(handler.try_merged, handler.run_alone, 100, keep_alive_every=0.01)
    a, b = Partition("a"), Partition("b")
    kept: list[str] = []
    waiting = b.deliveries("1")

    async def keep_alive() -> None:
        kept.append("b1")

    waiting[0].keep_alive = keep_alive
    first = await first_batch_held(handler, merged, a)
    queued = asyncio.create_task(merged.run(waiting))
    await eventually(lambda: len(kept) >= 2)
    handler.hold_first.set()
    await asyncio.gather(first, queued)
    assert b.acked == ["b1"]


async def test_an_aborted_merger_refuses_later_parts() -> None:
    handler = Handler()
    merged = MergedBatches(handler.try_merged, handler.run_alone, max_batch=10)
    merged.abort()
    with pytest.raises(asyncio.CancelledError):
        await merged.run(Partition("a").deliveries("1"))
    assert handler.merged_calls == []


async def test_a_cancelled_worker_withdraws_its_queued_part_unhandled() -> None:
    handler = Handler()
    merged = MergedBatches(handler.try_merged, handler.run_alone, max_batch=100)
    a, b = Partition("a"), Partition("b")

    first = await first_batch_held(handler, merged, a)
    withdrawn = asyncio.create_task(merged.run(b.deliveries("1")))
    await asyncio.sleep(0)
    withdrawn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await withdrawn
    handler.hold_first.set()
    await first

    assert handler.merged_calls == [["a1"]]
    assert b.acked == []


async def test_abort_cancels_the_batch_in_flight_and_acks_nothing_more() -> None:
    handler = Handler()
    merged = MergedBatches(handler.try_merged, handler.run_alone, max_batch=100)
    a, b = Partition("a"), Partition("b")

    first = await first_batch_held(handler, merged, a)
    queued = asyncio.create_task(merged.run(b.deliveries("1")))
    await asyncio.sleep(0)
    merged.abort()
    results = await asyncio.gather(first, queued, return_exceptions=True)

    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert a.acked == []
    assert b.acked == []
    assert handler.alone_calls == []

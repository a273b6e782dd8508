"""The in-process event bus: the port's exact semantics without a server.

:class:`~tradeloom.messaging.memory_broker.MemoryBroker` is the shared state a server would
hold (partitioned logs with retention, dedup windows, group cursors); :class:`MemoryBus` is a
client of it, like one process's connection: several buses attached to one broker behave like
several processes, and :meth:`MemoryBus.abort` simulates one of them dying with unacknowledged
work.

Guarantees (the contract suite checks each against this adapter and NATS):

* Events are encoded with ``encode_event`` on publish and decoded on delivery, so a handler
  never shares an object with the publisher and unserializable events fail at publish time.
* Per-key order, group sharing, ack deadlines and retention are the broker's: see
  :mod:`~tradeloom.messaging.memory_broker`. The broker drops what every group acknowledged
  and what is older than the topic's retention, so the embedded default can run for days.
* Everything runs on the one event loop of the process; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from tradeloom.domain.events import Event, encode_event
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.messaging.delivery import (
    BATCH_DEFAULTS,
    EACH_DEFAULTS,
    Delivery,
    DeliveryRunner,
    DeliveryStats,
)
from tradeloom.messaging.memory_broker import Member, MemoryBroker
from tradeloom.messaging.port import (
    BatchHandler,
    ConsumerOptions,
    EventHandler,
    Subscription,
)
from tradeloom.messaging.topics import DEAD_LETTER, topic

__all__ = ["MemoryBroker", "MemoryBus"]

_log = structlog.get_logger(__name__)


class _MemorySubscription:
    """A member of a group on one :class:`MemoryBus`; runs each hand-out in its own task."""

    def __init__(
        self,
        broker: MemoryBroker,
        topic_name: str,
        group: str,
        options: ConsumerOptions,
        runner: DeliveryRunner,
        handle: Callable[[DeliveryRunner, list[Delivery]], asyncio.Future[None]],
    ) -> None:
        self._broker = broker
        self._topic = topic_name
        self._group = group
        self._runner = runner
        self._handle = handle
        self._tasks: set[asyncio.Future[None]] = set()
        self._member = Member(options, self._run)
        self._active = True
        broker.join(topic_name, group, self._member)

    def _run(self, deliveries: list[Delivery]) -> None:
        task = self._handle(self._runner, deliveries)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Nothing was acked: the broker hands the events out again after ack_wait.
            _log.error(
                "bus.delivery_failed",
                topic=self._topic,
                group=self._group,
                error=repr(task.exception()),
            )

    async def stop(self) -> None:
        """Take no new work, let in-flight handlers finish and ack."""
        if self._active:
            self._active = False
            self._broker.leave(self._topic, self._group, self._member)
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def abort(self) -> None:
        """Vanish like a crashed process: in-flight work is dropped unacknowledged."""
        if self._active:
            self._active = False
            self._broker.leave(self._topic, self._group, self._member)
        for task in list(self._tasks):
            task.cancel()


class MemoryBus:
    """An :class:`~tradeloom.messaging.port.EventBus` client of a :class:`MemoryBroker`.

    Without a broker it makes its own, which is the embedded single-process default.
    ``stats`` counts handled events, handler failures and dead letters of this bus.
    """

    def __init__(
        self,
        broker: MemoryBroker | None = None,
        *,
        keep_alive_every: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.stats = DeliveryStats()
        self._keep_alive_every = keep_alive_every
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._subscriptions: list[_MemorySubscription] = []
        self._open = False

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.stop()

    async def abort(self) -> None:
        """Drop every subscription at once, acking nothing (simulates a crashed process)."""
        self._open = False
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.abort()

    async def publish(self, topic: str, event: Event, key: str) -> None:
        self._require_open()
        name = _topic_name(topic)
        self.broker.append(name, event.id, encode_event(event), key)
        await asyncio.sleep(0)  # yield like real I/O would, so consumers are not starved

    async def publish_many(self, topic: str, items: Sequence[tuple[Event, str]]) -> None:
        self._require_open()
        name = _topic_name(topic)
        encoded = [(event.id, encode_event(event), key) for event, key in items]
        for event_id, data, key in encoded:
            self.broker.append(name, event_id, data, key)
        await asyncio.sleep(0)

    async def subscribe(
        self,
        topic: str,
        group: str,
        handler: EventHandler,
        options: ConsumerOptions = EACH_DEFAULTS,
    ) -> Subscription:
        def handle(runner: DeliveryRunner, deliveries: list[Delivery]) -> asyncio.Future[None]:
            return asyncio.ensure_future(runner.run_each(deliveries, handler))

        return self._join(topic, group, options, handle)

    async def subscribe_batch(
        self,
        topic: str,
        group: str,
        handler: BatchHandler,
        options: ConsumerOptions = BATCH_DEFAULTS,
    ) -> Subscription:
        def handle(runner: DeliveryRunner, deliveries: list[Delivery]) -> asyncio.Future[None]:
            return asyncio.ensure_future(runner.run_batch(deliveries, handler))

        return self._join(topic, group, options, handle)

    async def ping(self) -> None:
        self._require_open()

    def _join(
        self,
        topic_name: str,
        group: str,
        options: ConsumerOptions,
        handle: Callable[[DeliveryRunner, list[Delivery]], asyncio.Future[None]],
    ) -> _MemorySubscription:
        self._require_open()
        name = _topic_name(topic_name)
        runner = DeliveryRunner(
            topic=name,
            group=group,
            retry=options.retry,
            keep_alive_every=min(self._keep_alive_every, options.ack_wait / 3),
            dead_letter=self._publish_dead_letter,
            stats=self.stats,
            clock=self._clock,
        )
        subscription = _MemorySubscription(self.broker, name, group, options, runner, handle)
        self._subscriptions.append(subscription)
        return subscription

    async def _publish_dead_letter(self, letter: Event, key: str) -> None:
        self.broker.append(DEAD_LETTER.name, letter.id, encode_event(letter), key)

    def _require_open(self) -> None:
        if not self._open:
            raise ConnectionError("the memory bus is not started, or already closed")


def _topic_name(name: str) -> str:
    return topic(name).name

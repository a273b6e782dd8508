"""The in-process event bus: the port's exact semantics without a server.

:class:`MemoryBroker` is the shared state a server would hold: per-topic partitioned logs, a
deduplication window per topic, and per group a cursor and at most one hand-out in flight per
partition, with an ack deadline. :class:`MemoryBus` is a client of it, like one process's
connection: several buses attached to one broker behave like several processes, and
:meth:`MemoryBus.abort` simulates one of them dying with unacknowledged work.

Guarantees (the contract suite checks each against this adapter and NATS):

* Events are encoded with ``encode_event`` on publish and decoded on delivery, so a handler
  never shares an object with the publisher and unserializable events fail at publish time.
* A key always maps to the same partition (:func:`partition_of`). Per group and partition one
  hand-out is in flight at a time (one event for single handlers, up to ``max_batch`` for batch
  handlers, handled in order), so events of a key are handled in publish order; different
  partitions are handed to members in parallel, round-robin over the group's members.
* A hand-out not fully acknowledged within ``ack_wait`` (its member died, or is too slow) is
  handed out again, possibly to another member; that counts as a failed attempt.
* Everything runs on the one event loop of the process; nothing here is thread-safe.
  The broker keeps every event for its lifetime (it is for tests and the embedded default).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
from tradeloom.messaging.partitioning import partition_of
from tradeloom.messaging.port import (
    BatchHandler,
    ConsumerOptions,
    EventHandler,
    Subscription,
)
from tradeloom.messaging.topics import DEAD_LETTER, topic

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Record:
    data: bytes
    key: str


@dataclass(slots=True)
class _Handout:
    """Records ``start .. start+count`` of one partition, handed to one member."""

    token: int
    member: _Member
    start: int
    count: int
    timer: asyncio.TimerHandle
    acked: int = 0


@dataclass(slots=True)
class _Cursor:
    offset: int = 0  # the oldest record this group has not acknowledged
    handout: _Handout | None = None
    prior_attempts: dict[int, int] = field(default_factory=dict)  # offset -> failed deliveries


@dataclass(slots=True)
class _Group:
    topic: str
    name: str
    cursors: list[_Cursor]
    members: list[_Member] = field(default_factory=list)
    turn: int = 0


class _Member:
    """One subscription's seat in a group; the broker hands it records to run."""

    def __init__(self, options: ConsumerOptions, run: Callable[[list[Delivery]], None]) -> None:
        self.options = options
        self.run = run


class MemoryBroker:
    """The shared state of an in-process bus; attach one or more :class:`MemoryBus` to it."""

    def __init__(self, *, partitions: int = 8, dedup_window: float = 120.0) -> None:
        if dedup_window < 120.0:
            raise ValueError("the dedup window must be at least two minutes")
        self.partitions = partitions
        self._dedup_window = dedup_window
        self._logs: dict[str, list[list[_Record]]] = {}
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._tokens = itertools.count(1)

    def append(self, topic_name: str, event_id: str, data: bytes, key: str) -> None:
        """Store one event unless its id was seen on this topic within the dedup window."""
        now = asyncio.get_running_loop().time()
        seen = self._seen.setdefault(topic_name, OrderedDict())
        while seen and next(iter(seen.values())) < now - self._dedup_window:
            seen.popitem(last=False)
        if event_id in seen:
            return
        seen[event_id] = now
        self._log(topic_name)[partition_of(key, self.partitions)].append(_Record(data, key))
        for group in self._groups.values():
            if group.topic == topic_name:
                self._pump(group)

    def join(self, topic_name: str, group_name: str, member: _Member) -> None:
        group = self._groups.get((topic_name, group_name))
        if group is None:
            group = _Group(topic_name, group_name, [_Cursor() for _ in range(self.partitions)])
            self._groups[(topic_name, group_name)] = group
        group.members.append(member)
        self._pump(group)

    def leave(self, topic_name: str, group_name: str, member: _Member) -> None:
        """Stop handing ``member`` new work; what it holds is acked or expires on its own."""
        group = self._groups[(topic_name, group_name)]
        group.members.remove(member)

    def _log(self, topic_name: str) -> list[list[_Record]]:
        return self._logs.setdefault(topic_name, [[] for _ in range(self.partitions)])

    def _pump(self, group: _Group) -> None:
        log = self._log(group.topic)
        for partition, cursor in enumerate(group.cursors):
            if cursor.handout is None and cursor.offset < len(log[partition]) and group.members:
                member = group.members[group.turn % len(group.members)]
                group.turn += 1
                self._hand_out(group, partition, member, log[partition])

    def _hand_out(
        self, group: _Group, partition: int, member: _Member, records: list[_Record]
    ) -> None:
        cursor = group.cursors[partition]
        start = cursor.offset
        count = min(member.options.max_batch, len(records) - start)
        token = next(self._tokens)
        timer = self._deadline(group, partition, token, member.options.ack_wait)
        cursor.handout = _Handout(token, member, start, count, timer)
        deliveries = [
            self._delivery(group, partition, token, offset, records[offset])
            for offset in range(start, start + count)
        ]
        member.run(deliveries)

    def _delivery(
        self, group: _Group, partition: int, token: int, offset: int, record: _Record
    ) -> Delivery:
        async def ack() -> None:
            self._ack(group, partition, token, offset)

        async def keep_alive() -> None:
            handout = group.cursors[partition].handout
            if handout is not None and handout.token == token:
                handout.timer.cancel()
                wait = handout.member.options.ack_wait
                handout.timer = self._deadline(group, partition, token, wait)

        prior = group.cursors[partition].prior_attempts.get(offset, 0)
        return Delivery(record.data, record.key, prior, ack, keep_alive)

    def _deadline(
        self, group: _Group, partition: int, token: int, ack_wait: float
    ) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(ack_wait, self._expire, group, partition, token)

    def _ack(self, group: _Group, partition: int, token: int, offset: int) -> None:
        cursor = group.cursors[partition]
        handout = cursor.handout
        if handout is None or handout.token != token or offset != cursor.offset:
            return  # a late ack of a hand-out that already expired and went elsewhere
        cursor.prior_attempts.pop(offset, None)
        cursor.offset += 1
        handout.acked += 1
        if handout.acked == handout.count:
            handout.timer.cancel()
            cursor.handout = None
            self._pump(group)

    def _expire(self, group: _Group, partition: int, token: int) -> None:
        cursor = group.cursors[partition]
        handout = cursor.handout
        if handout is None or handout.token != token:
            return
        _log.warning(
            "bus.ack_deadline_passed",
            topic=group.topic,
            group=group.name,
            partition=partition,
            unacked=handout.count - handout.acked,
        )
        for offset in range(cursor.offset, handout.start + handout.count):
            cursor.prior_attempts[offset] = cursor.prior_attempts.get(offset, 0) + 1
        cursor.handout = None
        self._pump(group)


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
        self._member = _Member(options, self._run)
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

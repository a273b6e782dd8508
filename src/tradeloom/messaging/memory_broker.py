"""The shared state of the in-process bus: what a server would hold.

:class:`MemoryBroker` keeps per topic a partitioned log (:class:`PartitionLog`) and a dedup
window, and per group a cursor per partition with at most one hand-out in flight and an ack
deadline. :class:`~tradeloom.messaging.memory.MemoryBus` is a client of it.

Hand-outs: a key always maps to the same partition (:func:`partition_of`). Per group and
partition one hand-out is in flight at a time (one event for single handlers, up to
``max_batch`` for batch handlers, handled in order), so events of a key are handled in publish
order; different partitions go to members in parallel, round-robin over the group's members.
A hand-out not fully acknowledged within ``ack_wait`` (its member died, or is too slow) is
handed out again, possibly to another member; that counts as a failed attempt.

Retention, so that a long-running embedded process does not grow without bound:

* A record every group of its topic has acknowledged is dropped (a partition is trimmed up to
  the lowest cursor of the topic's groups). A group with no members left keeps its cursor, so
  it keeps the records it has not acknowledged, like a durable consumer.
* A record older than the topic's ``retention`` (:mod:`~tradeloom.messaging.topics`) is dropped
  whether or not a group acknowledged it, like a JetStream ``max_age``; a group that was behind
  skips it. A record that is handed out right now is kept until that hand-out settles.
* A topic with no group keeps its records for ``retention``; a group created later starts at
  the oldest retained record (a durable consumer with deliver-all on a limits stream).
* Event ids are remembered for ``dedup_window`` seconds from their first publish, then forgotten.

Age is checked at most once a second per topic, when something is published to it or a
hand-out of it settles. Everything runs on one event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from tradeloom.messaging.delivery import Delivery
from tradeloom.messaging.memory_log import DedupWindow, PartitionLog, Record
from tradeloom.messaging.partitioning import partition_of
from tradeloom.messaging.port import ConsumerOptions
from tradeloom.messaging.topics import topic

_log = structlog.get_logger(__name__)

_SWEEP_EVERY = 1.0  # seconds between age checks of one topic


@dataclass(slots=True)
class _Handout:
    """Records ``start .. start+count`` of one partition, handed to one member."""

    token: int
    member: Member
    start: int
    count: int
    timer: asyncio.TimerHandle
    acked: int = 0


@dataclass(slots=True)
class _Cursor:
    offset: int  # the oldest record this group has not acknowledged
    handout: _Handout | None = None
    prior_attempts: dict[int, int] = field(default_factory=dict)  # offset -> failed deliveries


@dataclass(slots=True)
class _Group:
    topic: str
    name: str
    cursors: list[_Cursor]
    members: list[Member] = field(default_factory=list)
    turn: int = 0


@dataclass(slots=True)
class _Topic:
    logs: list[PartitionLog]
    dedup: DedupWindow
    retention: float  # seconds
    groups: list[_Group] = field(default_factory=list)
    next_sweep: float = 0.0


class Member:
    """One subscription's seat in a group; the broker hands it records to run."""

    def __init__(self, options: ConsumerOptions, run: Callable[[list[Delivery]], None]) -> None:
        self.options = options
        self.run = run


class MemoryBroker:
    """The shared state of an in-process bus; attach one or more ``MemoryBus`` to it.

    ``monotonic`` is the clock of retention and deduplication (seconds; tests pass a fake one);
    ack deadlines run on the event loop's clock.
    """

    def __init__(
        self,
        *,
        partitions: int = 8,
        dedup_window: float = 120.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if dedup_window < 120.0:
            raise ValueError("the dedup window must be at least two minutes")
        self.partitions = partitions
        self._dedup_window = dedup_window
        self._now = monotonic
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._tokens = itertools.count(1)

    def append(self, topic_name: str, event_id: str, data: bytes, key: str) -> None:
        """Store one event unless its id was seen on this topic within the dedup window."""
        now = self._now()
        state = self._topic(topic_name)
        if not state.dedup.admit(event_id, now):
            return
        partition = partition_of(key, self.partitions)
        state.logs[partition].append(Record(data, key, now))
        self._sweep(topic_name, state, now)
        for group in state.groups:
            self._pump_partition(group, partition, state.logs[partition])

    def join(self, topic_name: str, group_name: str, member: Member) -> None:
        group = self._groups.get((topic_name, group_name))
        if group is None:
            state = self._topic(topic_name)
            cursors = [_Cursor(log.base) for log in state.logs]  # the oldest retained record
            group = _Group(topic_name, group_name, cursors)
            self._groups[(topic_name, group_name)] = group
            state.groups.append(group)
        group.members.append(member)
        self._pump(group)

    def leave(self, topic_name: str, group_name: str, member: Member) -> None:
        """Stop handing ``member`` new work; what it holds is acked or expires on its own."""
        group = self._groups[(topic_name, group_name)]
        group.members.remove(member)

    def retained(self, topic_name: str) -> int:
        """How many records of ``topic_name`` the broker holds (for tests and metrics)."""
        state = self._topics.get(topic_name)
        return sum(len(log) for log in state.logs) if state is not None else 0

    def remembered_ids(self, topic_name: str) -> int:
        """How many event ids of ``topic_name`` the dedup window holds."""
        state = self._topics.get(topic_name)
        return len(state.dedup) if state is not None else 0

    def _topic(self, topic_name: str) -> _Topic:
        state = self._topics.get(topic_name)
        if state is None:
            state = _Topic(
                logs=[PartitionLog() for _ in range(self.partitions)],
                dedup=DedupWindow(self._dedup_window),
                retention=topic(topic_name).retention.total_seconds(),
            )
            self._topics[topic_name] = state
        return state

    def _pump(self, group: _Group) -> None:
        logs = self._topics[group.topic].logs
        for partition, log in enumerate(logs):
            self._pump_partition(group, partition, log)

    def _pump_partition(self, group: _Group, partition: int, log: PartitionLog) -> None:
        cursor = group.cursors[partition]
        if cursor.handout is None and cursor.offset < log.end and group.members:
            member = group.members[group.turn % len(group.members)]
            group.turn += 1
            self._hand_out(group, partition, member, log)

    def _hand_out(self, group: _Group, partition: int, member: Member, log: PartitionLog) -> None:
        cursor = group.cursors[partition]
        start = cursor.offset
        count = min(member.options.max_batch, log.end - start)
        token = next(self._tokens)
        timer = self._deadline(group, partition, token, member.options.ack_wait)
        cursor.handout = _Handout(token, member, start, count, timer)
        deliveries = [
            self._delivery(group, partition, token, offset, log.get(offset))
            for offset in range(start, start + count)
        ]
        member.run(deliveries)

    def _delivery(
        self, group: _Group, partition: int, token: int, offset: int, record: Record
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
        if cursor.prior_attempts:
            cursor.prior_attempts.pop(offset, None)
        cursor.offset += 1
        handout.acked += 1
        if handout.acked == handout.count:
            handout.timer.cancel()
            cursor.handout = None
            state = self._topics[group.topic]
            log = state.logs[partition]
            log.drop_before(min(each.cursors[partition].offset for each in state.groups))
            self._sweep(group.topic, state, self._now())
            self._pump_partition(group, partition, log)

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

    def _sweep(self, topic_name: str, state: _Topic, now: float) -> None:
        """Drop the records of every partition that are older than the topic's retention."""
        if now < state.next_sweep:
            return
        state.next_sweep = now + _SWEEP_EVERY
        cutoff = now - state.retention
        skipped: dict[str, int] = {}  # group -> records it had not consumed
        for partition, log in enumerate(state.logs):
            oldest = log.oldest()
            if oldest is None or oldest.stored_at >= cutoff:
                continue
            in_flight = [
                handout.start
                for group in state.groups
                if (handout := group.cursors[partition].handout) is not None
            ]
            log.drop_before(log.first_younger_than(cutoff, min(in_flight, default=log.end)))
            for group in state.groups:
                cursor = group.cursors[partition]
                if cursor.offset < log.base:
                    skipped[group.name] = skipped.get(group.name, 0) + log.base - cursor.offset
                    cursor.offset = log.base
                    cursor.prior_attempts = {
                        o: n for o, n in cursor.prior_attempts.items() if o >= log.base
                    }
        for group_name, count in skipped.items():
            _log.warning(
                "bus.retention_dropped_unconsumed",
                topic=topic_name,
                group=group_name,
                skipped=count,
                retention=state.retention,
            )

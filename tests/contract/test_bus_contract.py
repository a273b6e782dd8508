"""The EventBus contract (see ``tradeloom.messaging.port``), on every adapter.

Each test runs against the in-memory bus and against NATS JetStream; a point of the port's
docstring that is not proved here is not guaranteed.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import pytest
import structlog

from tests.contract.conftest import PARTITIONS, BusFactory
from tests.helpers import eventually
from tradeloom.domain.events import DeadLettered, Event, OrderAccepted, decode_event, new_event
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.messaging.memory_log import PartitionLog, Record
from tradeloom.messaging.partitioning import partition_of
from tradeloom.messaging.port import ConsumerOptions, RetryPolicy
from tradeloom.messaging.topics import DEAD_LETTER, MARKET_PRICE, ORDER_EVENTS

TOPIC = ORDER_EVENTS.name
FAST_RETRY = RetryPolicy(max_attempts=3, first_backoff=0.01, max_backoff=0.05)
FAST = ConsumerOptions(retry=FAST_RETRY, ack_wait=1.0)


def order_event(account: str, seq: int, *, note: str = "") -> Event:
    return new_event(
        OrderAccepted(order_id=f"{account}-{seq}", broker_order_id=note or str(seq)),
        occurred_at=datetime.now(UTC),
        correlation_id=f"corr-{account}-{seq}",
        account_id=account,
    )


def keyed(events: Sequence[Event]) -> list[tuple[Event, str]]:
    return [(event, event.account_id or "") for event in events]


def seq_of(event: Event) -> tuple[str, int]:
    assert isinstance(event.payload, OrderAccepted)
    account, _, seq = event.payload.order_id.rpartition("-")
    return account, int(seq)


class Recorder:
    """A handler that records what it got."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.batches: list[list[Event]] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)

    async def batch(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))
        self.events.extend(events)

    def ids(self) -> list[str]:
        return [event.id for event in self.events]


async def test_publish_then_consume(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    got = Recorder()
    await bus.subscribe(TOPIC, "g", got, FAST)
    event = order_event("acc1", 1)

    await bus.publish(TOPIC, event, "acc1")

    await eventually(lambda: len(got.events) == 1, message=lambda: f"received {got.events}")
    assert got.events == [event]
    await bus.ping()


async def test_every_group_gets_every_event(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    first, second = Recorder(), Recorder()
    await bus.subscribe(TOPIC, "first", first, FAST)
    await bus.subscribe(TOPIC, "second", second, FAST)
    events = [order_event(f"acc{i % 5}", i) for i in range(20)]

    await bus.publish_many(TOPIC, [(event, event.account_id or "") for event in events])

    expected = {event.id for event in events}
    await eventually(lambda: set(first.ids()) == expected and set(second.ids()) == expected)
    assert len(first.events) == len(second.events) == 20


async def test_members_of_a_group_share_the_work(bus_factory: BusFactory) -> None:
    one, two = await bus_factory.new(), await bus_factory.new()
    got_one, got_two = Recorder(), Recorder()
    await one.subscribe(TOPIC, "shared", got_one, FAST)
    await two.subscribe(TOPIC, "shared", got_two, FAST)
    published: list[Event] = []

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not (got_one.events and got_two.events):
        assert loop.time() < deadline, "the second member never got any work"
        wave = [order_event(f"acc{i}", len(published) + i) for i in range(16)]
        await one.publish_many(TOPIC, [(event, event.account_id or "") for event in wave])
        published.extend(wave)
        total = len(published)
        await eventually(lambda n=total: len(got_one.events) + len(got_two.events) >= n)

    received = got_one.ids() + got_two.ids()
    assert Counter(received).most_common(1)[0][1] == 1, "an event was handled twice"
    assert set(received) == {event.id for event in published}


async def test_per_key_order_under_concurrent_publishers(bus_factory: BusFactory) -> None:
    consumers = [await bus_factory.new(), await bus_factory.new()]
    publisher = await bus_factory.new()
    got = Recorder()

    async def slow_handler(event: Event) -> None:
        await asyncio.sleep(0)  # let other partitions interleave
        await got(event)

    for bus in consumers:
        await bus.subscribe(TOPIC, "ordered", slow_handler, FAST)
    keys = [f"acc{k}" for k in range(10)]

    async def publish_keys(mine: list[str], pipelined: bool) -> None:
        for seq in range(50):
            if pipelined:
                items = [(order_event(key, seq), key) for key in mine]
                await publisher.publish_many(TOPIC, items)
            else:
                for key in mine:
                    await publisher.publish(TOPIC, order_event(key, seq), key)

    await asyncio.gather(
        *(publish_keys(keys[i : i + 2], pipelined=i % 4 == 0) for i in range(0, 10, 2))
    )

    await eventually(lambda: len(got.events) >= 500, within=20)
    per_key: dict[str, list[int]] = defaultdict(list)
    for event in got.events:
        account, seq = seq_of(event)
        per_key[account].append(seq)
    for key in keys:
        assert per_key[key] == list(range(50)), f"{key} arrived out of order: {per_key[key]}"
    switches = sum(
        1 for a, b in zip(got.events, got.events[1:], strict=False) if a.account_id != b.account_id
    )
    assert switches > len(keys), "keys did not interleave"


async def test_a_failing_handler_gets_the_event_again(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    attempts: list[str] = []
    done: list[Event] = []

    async def flaky(event: Event) -> None:
        attempts.append(event.id)
        if len(attempts) < 3:
            raise RuntimeError("database is briefly unavailable")
        done.append(event)

    await bus.subscribe(TOPIC, "flaky", flaky, FAST)
    event = order_event("acc1", 1)
    await bus.publish(TOPIC, event, "acc1")

    await eventually(lambda: len(done) == 1)
    assert attempts == [event.id] * 3
    assert bus.stats.handler_failures == 2
    assert bus.stats.dead_lettered == 0


async def test_a_dead_members_unacked_event_goes_to_another_member(
    bus_factory: BusFactory,
) -> None:
    doomed, survivor = await bus_factory.new(), await bus_factory.new()
    stuck: list[Event] = []
    never = asyncio.Event()

    async def hang(event: Event) -> None:
        stuck.append(event)
        await never.wait()

    await doomed.subscribe(TOPIC, "workers", hang, FAST)
    event = order_event("acc1", 1)
    await doomed.publish(TOPIC, event, "acc1")
    await eventually(lambda: len(stuck) == 1)
    rescued = Recorder()
    await survivor.subscribe(TOPIC, "workers", rescued, FAST)

    await bus_factory.kill(doomed)

    await eventually(lambda: len(rescued.events) == 1, within=15)
    assert rescued.events == [event]


async def test_a_republished_event_id_is_delivered_once(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    got = Recorder()
    await bus.subscribe(TOPIC, "dedup", got, FAST)
    event, marker = order_event("acc1", 1), order_event("acc1", 2)

    await bus.publish(TOPIC, event, "acc1")
    await bus.publish(TOPIC, event, "acc1")
    await bus.publish_many(TOPIC, [(event, "acc1"), (marker, "acc1")])

    await eventually(lambda: marker.id in got.ids())
    assert got.ids() == [event.id, marker.id]


async def test_exhausted_retries_go_to_the_dead_letter_topic(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    letters = Recorder()
    handled: list[Event] = []
    poison = order_event("acc1", 1, note="poison")

    async def picky(event: Event) -> None:
        if event.id == poison.id:
            raise ValueError("cannot handle this one")
        handled.append(event)

    await bus.subscribe(DEAD_LETTER.name, "dlq", letters, FAST)
    await bus.subscribe(TOPIC, "picky", picky, FAST)
    after = order_event("acc1", 2)

    await bus.publish_many(TOPIC, [(poison, "acc1"), (after, "acc1")])

    await eventually(lambda: len(letters.events) == 1 and len(handled) == 1)
    letter = letters.events[0].payload
    assert isinstance(letter, DeadLettered)
    assert letter.topic == TOPIC
    assert letter.group == "picky"
    assert letter.attempts == FAST_RETRY.max_attempts
    assert "cannot handle this one" in letter.error
    assert letter.original_event_id == poison.id
    assert letter.original_type == "order.accepted"
    assert decode_event(letter.original) == poison
    assert handled == [after], "the event behind the poison one must follow once it is gone"
    assert bus.stats.dead_lettered == 1


async def test_a_group_created_later_gets_the_retained_events(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    events = [order_event(f"acc{i % 4}", i) for i in range(30)]
    await bus.publish_many(TOPIC, keyed(events))

    late = Recorder()
    await bus.subscribe(TOPIC, "late", late, FAST)

    await eventually(lambda: len(late.events) >= 30)
    assert sorted(late.ids()) == sorted(event.id for event in events)


async def test_batch_handler_gets_batches(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    got = Recorder()
    events = [order_event(f"acc{i % 3}", i) for i in range(120)]
    await bus.publish_many(TOPIC, [(event, event.account_id or "") for event in events])

    options = ConsumerOptions(retry=FAST_RETRY, ack_wait=1.0, max_batch=25, max_wait=0.05)
    await bus.subscribe_batch(TOPIC, "batches", got.batch, options)

    await eventually(lambda: len(got.events) >= 120)
    assert sorted(got.ids()) == sorted(event.id for event in events)
    assert max(len(batch) for batch in got.batches) > 1
    assert max(len(batch) for batch in got.batches) <= 25
    per_key: dict[str | None, list[int]] = defaultdict(list)
    for event in got.events:
        per_key[event.account_id].append(seq_of(event)[1])
    assert all(seqs == sorted(seqs) for seqs in per_key.values()), per_key


async def test_a_handled_batch_is_settled_whole(bus_factory: BusFactory) -> None:
    """Every event of a handled batch is acknowledged: past the ack deadline, another member
    of the group gets none again."""
    first = await bus_factory.new()
    got = Recorder()
    events = [order_event("acc1", i) for i in range(30)]
    await first.publish_many(TOPIC, [(event, "acc1") for event in events])
    options = ConsumerOptions(retry=FAST_RETRY, ack_wait=1.0, max_batch=10, max_wait=0.05)
    await first.subscribe_batch(TOPIC, "settled", got.batch, options)
    await eventually(lambda: len(got.events) == 30)
    await bus_factory.kill(first)  # vanishes without releasing anything

    later = await bus_factory.new()
    again = Recorder()
    await later.subscribe_batch(TOPIC, "settled", again.batch, options)
    marker = order_event("acc1", 30)
    await later.publish(TOPIC, marker, "acc1")
    await eventually(lambda: len(again.events) >= 1, within=15)
    await asyncio.sleep(1.5)  # past ack_wait: anything unacked would be back by now
    assert again.ids() == [marker.id]


async def test_a_dead_members_batch_is_not_settled_by_later_events(
    bus_factory: BusFactory,
) -> None:
    """A member dies holding a batch it never finished; later events of the same partition
    go to another member and are acknowledged there. The dead member's events must still
    come back (a cumulative ack of the later events would settle them unhandled: lost)."""
    doomed, survivor = await bus_factory.new(), await bus_factory.new()
    stuck: list[Event] = []
    never = asyncio.Event()

    async def hang(events: Sequence[Event]) -> None:
        stuck.extend(events)
        await never.wait()

    # The ack deadline outlasts the partition lease (1 s here; in production the 30 s ack
    # deadline outlasts the 5 s lease), so the survivor takes the partition while the first
    # event is still out with the dead member.
    options = ConsumerOptions(retry=FAST_RETRY, ack_wait=4.0, max_batch=10, max_wait=0.01)
    await doomed.subscribe_batch(TOPIC, "workers", hang, options)
    first = order_event("acc1", 1)
    await doomed.publish(TOPIC, first, "acc1")
    await eventually(lambda: len(stuck) == 1)
    rescued = Recorder()
    await survivor.subscribe_batch(TOPIC, "workers", rescued.batch, options)
    await bus_factory.kill(doomed)
    later = order_event("acc1", 2)
    await survivor.publish(TOPIC, later, "acc1")

    await eventually(lambda: {first.id, later.id} <= set(rescued.ids()), within=15)


async def test_a_poison_event_in_a_batch_is_dead_lettered_alone(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    letters = Recorder()
    handled: list[Event] = []
    events = [order_event("acc1", i) for i in range(10)]
    poison = events[4]

    async def store(batch: Sequence[Event]) -> None:
        if any(event.id == poison.id for event in batch):
            raise ValueError("constraint violated")
        handled.extend(batch)

    await bus.subscribe(DEAD_LETTER.name, "dlq", letters, FAST)
    await bus.publish_many(TOPIC, [(event, "acc1") for event in events])
    options = ConsumerOptions(retry=FAST_RETRY, ack_wait=1.0, max_batch=10, max_wait=0.05)
    await bus.subscribe_batch(TOPIC, "store", store, options)

    await eventually(lambda: len(handled) == 9 and len(letters.events) == 1)
    assert [event.id for event in handled] == [e.id for e in events if e.id != poison.id]
    letter = letters.events[0].payload
    assert isinstance(letter, DeadLettered)
    assert letter.original_event_id == poison.id


async def test_a_retried_batch_event_holds_back_only_its_own_partition(
    bus_factory: BusFactory,
) -> None:
    """While one key's event keeps failing (retried with backoff, its partition waiting), the
    events of a key in another partition are handled, whatever the adapter batches together."""
    bus = await bus_factory.new()
    stuck_key = "acc-stuck"
    free_key = next(
        key
        for key in (f"acc-free-{n}" for n in range(100))
        if partition_of(key, PARTITIONS) != partition_of(stuck_key, PARTITIONS)
    )
    stuck = order_event(stuck_key, 1)
    healed = asyncio.Event()
    handled = Recorder()

    async def store(batch: Sequence[Event]) -> None:
        if any(event.id == stuck.id for event in batch) and not healed.is_set():
            raise RuntimeError("this account's row is locked")
        await handled.batch(batch)

    slow_retry = RetryPolicy(max_attempts=100, first_backoff=0.05, max_backoff=0.05)
    options = ConsumerOptions(retry=slow_retry, ack_wait=5.0, max_batch=50, max_wait=0.01)
    await bus.subscribe_batch(TOPIC, "isolated", store, options)
    await bus.publish(TOPIC, stuck, stuck_key)
    free = [order_event(free_key, i) for i in range(5)]
    for event in free:  # one at a time, so they arrive while the stuck event is retried
        await bus.publish(TOPIC, event, free_key)

    await eventually(lambda: {e.id for e in free} <= set(handled.ids()))
    assert stuck.id not in handled.ids()
    healed.set()
    await eventually(lambda: stuck.id in handled.ids())
    assert bus.stats.dead_lettered == 0


async def test_unknown_topics_and_unserializable_events_are_refused(
    bus_factory: BusFactory,
) -> None:
    bus = await bus_factory.new()
    with pytest.raises(KeyError, match="unknown topic"):
        await bus.publish("no.such.topic", order_event("acc1", 1), "acc1")
    with pytest.raises(KeyError, match="unknown topic"):
        await bus.subscribe("no.such.topic", "g", Recorder(), FAST)
    broken = Event(
        id="not-serializable",
        occurred_at=datetime.now(UTC),
        correlation_id="c",
        payload=OrderAccepted(order_id=object(), broker_order_id="b"),  # type: ignore[arg-type]
    )
    with pytest.raises((TypeError, msgspec.EncodeError)):
        await bus.publish(TOPIC, broken, "acc1")
    with pytest.raises((TypeError, msgspec.EncodeError)):
        await bus.publish_many(TOPIC, [(order_event("acc1", 1), "acc1"), (broken, "acc1")])


async def test_a_closed_bus_refuses_work(bus_factory: BusFactory) -> None:
    bus = await bus_factory.new()
    await bus.close()
    with pytest.raises(ConnectionError):
        await bus.ping()
    with pytest.raises(ConnectionError):
        await bus.publish(TOPIC, order_event("acc1", 1), "acc1")


# The in-memory broker's retention. Not part of the port (a NATS limits stream keeps what was
# acknowledged until max_age); these prove the embedded default does not grow without bound.


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Embedded:
    broker: MemoryBroker
    bus: MemoryBus
    clock: FakeMonotonic


@pytest.fixture
async def embedded() -> AsyncIterator[Embedded]:
    clock = FakeMonotonic()
    broker = MemoryBroker(partitions=4, monotonic=clock)
    bus = MemoryBus(broker, keep_alive_every=0.1)
    await bus.start()
    try:
        yield Embedded(broker, bus, clock)
    finally:
        await bus.close()


async def test_memory_broker_drops_what_every_group_acknowledged(embedded: Embedded) -> None:
    bus, broker = embedded.bus, embedded.broker
    single, batched = Recorder(), Recorder()
    await bus.subscribe(TOPIC, "single", single, FAST)
    options = ConsumerOptions(retry=FAST_RETRY, ack_wait=1.0, max_batch=50, max_wait=0.01)
    await bus.subscribe_batch(TOPIC, "batched", batched.batch, options)
    events = [order_event(f"acc{i % 7}", i) for i in range(3000)]

    for start in range(0, len(events), 250):
        await bus.publish_many(TOPIC, keyed(events[start : start + 250]))

    await eventually(lambda: bus.stats.handled == 2 * len(events), within=20)
    assert len(single.events) == len(batched.events) == len(events)
    await eventually(
        lambda: broker.retained(TOPIC) == 0, message=lambda: f"{broker.retained(TOPIC)} kept"
    )


async def test_memory_broker_keeps_what_a_group_has_not_acknowledged(embedded: Embedded) -> None:
    bus, broker = embedded.bus, embedded.broker
    idle = await bus.subscribe(TOPIC, "idle", Recorder(), FAST)
    await idle.stop()  # the group stays, like a durable consumer nobody reads for a while
    busy = Recorder()
    await bus.subscribe(TOPIC, "busy", busy, FAST)
    events = [order_event(f"acc{i % 5}", i) for i in range(300)]

    await bus.publish_many(TOPIC, keyed(events))

    await eventually(lambda: bus.stats.handled == 300)
    assert broker.retained(TOPIC) == 300, "the idle group has acknowledged none of them"
    back = Recorder()
    await bus.subscribe(TOPIC, "idle", back, FAST)
    await eventually(lambda: len(back.events) == 300)
    assert sorted(back.ids()) == sorted(event.id for event in events)
    await eventually(lambda: broker.retained(TOPIC) == 0)


async def test_memory_broker_late_group_starts_at_the_oldest_retained(embedded: Embedded) -> None:
    bus, broker = embedded.bus, embedded.broker
    early = await bus.subscribe(TOPIC, "early", Recorder(), FAST)
    consumed = [order_event(f"acc{i % 5}", i) for i in range(100)]
    await bus.publish_many(TOPIC, keyed(consumed))
    await eventually(lambda: bus.stats.handled == 100 and broker.retained(TOPIC) == 0)
    await early.stop()
    retained = [order_event(f"acc{i % 5}", i) for i in range(100, 150)]
    await bus.publish_many(TOPIC, keyed(retained))
    assert broker.retained(TOPIC) == 50

    late = Recorder()
    await bus.subscribe(TOPIC, "late", late, FAST)

    await eventually(lambda: len(late.events) >= 50)
    assert sorted(late.ids()) == sorted(event.id for event in retained)


async def test_memory_broker_drops_records_older_than_the_retention(embedded: Embedded) -> None:
    bus, broker, clock = embedded.bus, embedded.broker, embedded.clock
    price = MARKET_PRICE.name
    stalled = await bus.subscribe(price, "stalled", Recorder(), FAST)
    await stalled.stop()
    old = [order_event("BTC-USD", i) for i in range(10)]
    await bus.publish_many(price, [(event, "BTC-USD") for event in old])
    assert broker.retained(price) == 10

    clock.now += MARKET_PRICE.retention.total_seconds() + 1
    fresh = order_event("ETH-USD", 10)
    with structlog.testing.capture_logs() as logs:
        await bus.publish(price, fresh, "ETH-USD")

    assert broker.retained(price) == 1
    dropped = [log for log in logs if log["event"] == "bus.retention_dropped_unconsumed"]
    assert [(log["group"], log["skipped"]) for log in dropped] == [("stalled", 10)]
    resumed, newcomer = Recorder(), Recorder()
    await bus.subscribe(price, "stalled", resumed, FAST)
    await bus.subscribe(price, "newcomer", newcomer, FAST)
    await eventually(lambda: len(resumed.events) >= 1 and len(newcomer.events) >= 1)
    assert resumed.ids() == newcomer.ids() == [fresh.id]


async def test_memory_broker_keeps_an_expired_record_while_it_is_handed_out(
    embedded: Embedded,
) -> None:
    bus, broker, clock = embedded.bus, embedded.broker, embedded.clock
    price = MARKET_PRICE.name
    release = asyncio.Event()
    handled: list[Event] = []

    async def slow(event: Event) -> None:
        await release.wait()
        handled.append(event)

    await bus.subscribe(price, "slow", slow, ConsumerOptions(retry=FAST_RETRY, ack_wait=30))
    events = [order_event("BTC-USD", i) for i in range(3)]
    await bus.publish_many(price, [(event, "BTC-USD") for event in events])
    clock.now += MARKET_PRICE.retention.total_seconds() + 1

    try:
        await bus.publish(price, order_event("ETH-USD", 3), "ETH-USD")

        assert broker.retained(price) >= 3, "the handed-out record and those behind it stay"
    finally:
        release.set()  # else closing the bus would wait for the handler forever
    await eventually(lambda: len(handled) == 4)
    assert [event.id for event in handled if event.account_id == "BTC-USD"] == [
        event.id for event in events
    ]
    await eventually(lambda: broker.retained(price) == 0)


async def test_memory_broker_forgets_event_ids_after_the_dedup_window(embedded: Embedded) -> None:
    bus, broker, clock = embedded.bus, embedded.broker, embedded.clock
    got = Recorder()
    await bus.subscribe(TOPIC, "dedup", got, FAST)
    event = order_event("acc1", 0)
    await bus.publish(TOPIC, event, "acc1")
    await bus.publish(TOPIC, event, "acc1")
    others = [order_event("acc2", i) for i in range(1, 100)]
    await bus.publish_many(TOPIC, keyed(others))
    assert broker.remembered_ids(TOPIC) == 100

    clock.now += 121
    await bus.publish(TOPIC, event, "acc1")  # outside the window: a new publish

    assert broker.remembered_ids(TOPIC) == 1
    await eventually(lambda: len(got.events) == 101)
    assert got.ids().count(event.id) == 2


def test_partition_log_offsets_survive_trimming() -> None:
    log = PartitionLog()
    for offset in range(5000):
        assert log.append(Record(str(offset).encode(), "k", float(offset))) == offset

    assert log.drop_before(4000) == 4000
    assert log.drop_before(10) == 0

    assert (log.base, log.end, len(log)) == (4000, 5000, 1000)
    assert log.get(4321).data == b"4321"
    assert log.first_younger_than(4500.0, limit=4200) == 4200
    assert log.first_younger_than(4500.0, limit=log.end) == 4500
    with pytest.raises(IndexError):
        log.get(3999)
    assert log.append(Record(b"next", "k", 5000.0)) == 5000
    assert log.drop_before(10_000) == 1001
    assert (log.base, len(log), log.oldest()) == (5001, 0, None)

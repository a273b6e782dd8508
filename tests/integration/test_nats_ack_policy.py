"""A durable consumer created by an earlier version acks explicitly; ack policies cannot
change, so the bus must keep acking such a consumer event by event, never cumulatively."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

import nats
from nats.js import api

from tests.helpers import eventually
from tradeloom.domain.events import Event, OrderAccepted, new_event
from tradeloom.messaging.nats import NatsBus, delete_bus_streams, stream_name
from tradeloom.messaging.nats_consumer import consumer_config
from tradeloom.messaging.port import ConsumerOptions, RetryPolicy
from tradeloom.messaging.topics import ORDER_EVENTS

PARTITIONS = 2
OPTIONS = ConsumerOptions(
    retry=RetryPolicy(max_attempts=3, first_backoff=0.01), ack_wait=1.0, max_batch=10
)


def accepted(n: int) -> Event:
    return new_event(
        OrderAccepted(order_id=f"o-{n}", broker_order_id=str(n)),
        occurred_at=datetime.now(UTC),
        correlation_id=f"c-{n}",
        account_id="acc1",
    )


async def test_an_explicit_ack_consumer_gets_every_event_of_a_batch_acked(
    nats_url: str, unique: str
) -> None:
    prefix = f"T{unique}"
    bus = NatsBus(nats_url, partitions=PARTITIONS, stream_prefix=prefix, lease_ttl=1.0)
    await bus.start()
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        stream = stream_name(prefix, ORDER_EVENTS.name)
        [wildcard] = (await js.stream_info(stream)).config.subjects or []
        for partition in range(PARTITIONS):  # what an earlier version created
            subject = wildcard.removesuffix("*") + str(partition)
            legacy = dataclasses.replace(
                consumer_config(f"legacy_{partition}", subject, OPTIONS),
                ack_policy=api.AckPolicy.EXPLICIT,
            )
            await js.add_consumer(stream, legacy)

        events = [accepted(n) for n in range(25)]
        await bus.publish_many(ORDER_EVENTS.name, [(event, "acc1") for event in events])
        seen: list[str] = []

        async def record(batch: Sequence[Event]) -> None:
            seen.extend(event.id for event in batch)

        await bus.subscribe_batch(ORDER_EVENTS.name, "legacy", record, OPTIONS)
        await eventually(lambda: len(seen) == 25)
        await asyncio.sleep(1.5)  # past ack_wait: an unacked event would be back by now
        assert seen == [event.id for event in events]
        for partition in range(PARTITIONS):
            info = await js.consumer_info(stream, f"legacy_{partition}")
            assert info.config.ack_policy == api.AckPolicy.EXPLICIT
            assert info.num_ack_pending == 0
    finally:
        await client.close()
        await bus.close()
        await delete_bus_streams(nats_url, prefix)

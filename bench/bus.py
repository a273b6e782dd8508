"""Event bus benchmark: publish and consume throughput, publish-to-handler latency.

Measures the memory adapter, the NATS adapter, and raw nats-py JetStream doing the same work
with the same pipelining (same in-flight ack window, same partitioned subjects, same
``Nats-Msg-Id`` header, same fetch batch), and prints the ratio adapter / raw.

    python bench/bus.py                      # 20,000 messages, nats://127.0.0.1:4222
    python bench/bus.py --messages 50000 --window 1024
    python bench/bus.py --no-nats            # memory adapter only

What is measured:
* publish: ``--rounds`` times one ``publish_many`` of ``--messages`` events (raw:
  ``publish_async`` for each pre-encoded event, then wait for every ack), messages per second
  until the last ack; the median round is shown (this 2-core machine is noisy).
* consume: a batch consumer (``--batch`` events per fetch) subscribed after the publish,
  messages per second from subscribing until the last one is handled and acked.
* latency: ``--latency-messages`` events published one at a time (each awaited) while a
  single-event consumer runs; time from just before publish to the handler, p50 and p99.

Streams are created under a throwaway prefix and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
import structlog
from nats.aio.msg import Msg
from nats.js import api

from tradeloom.domain.events import Event, OrderAccepted, encode_event, new_event
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.messaging.nats import NatsBus, delete_bus_streams
from tradeloom.messaging.partitioning import partition_of
from tradeloom.messaging.port import ConsumerOptions
from tradeloom.messaging.topics import ORDER_EVENTS, POSITION_UPDATED

TOPIC = ORDER_EVENTS.name
LATENCY_TOPIC = POSITION_UPDATED.name  # empty, so the latency consumer starts at once
KEYS = [f"acc{k}" for k in range(64)]


@dataclass
class Figures:
    name: str
    publish_per_s: float
    consume_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float


def make_events(count: int) -> list[tuple[Event, str]]:
    now = datetime.now(UTC)
    return [
        (
            new_event(
                OrderAccepted(order_id=f"o{i}", broker_order_id=f"b{i}"),
                occurred_at=now,
                correlation_id=f"c{i}",
                account_id=KEYS[i % len(KEYS)],
            ),
            KEYS[i % len(KEYS)],
        )
        for i in range(count)
    ]


async def wait_until(predicate: Callable[[], bool], within: float) -> None:
    deadline = time.perf_counter() + within
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("the benchmark did not finish in time")
        await asyncio.sleep(0.001)


def percentile(samples: Sequence[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


async def bench_adapter(
    name: str, make: Callable[[], Awaitable[MemoryBus | NatsBus]], args: argparse.Namespace
) -> Figures:
    bus = await make()
    try:
        rates = []
        for _ in range(args.rounds):
            items = make_events(args.messages)
            started = time.perf_counter()
            await bus.publish_many(TOPIC, items)
            rates.append(args.messages / (time.perf_counter() - started))
        total = args.messages * args.rounds

        handled = 0

        async def count(events: Sequence[Event]) -> None:
            nonlocal handled
            handled += len(events)

        started = time.perf_counter()
        options = ConsumerOptions(max_batch=args.batch, max_wait=0.01)
        await bus.subscribe_batch(TOPIC, "bench-consume", count, options)
        await wait_until(lambda: handled >= total, within=120)
        consume_s = time.perf_counter() - started

        latencies: list[float] = []
        sent: dict[str, float] = {}

        async def measure(event: Event) -> None:
            if event.id in sent:
                latencies.append(time.perf_counter() - sent[event.id])

        await bus.subscribe(LATENCY_TOPIC, "bench-latency", measure, ConsumerOptions())
        for event, key in make_events(args.latency_messages):
            sent[event.id] = time.perf_counter()
            await bus.publish(LATENCY_TOPIC, event, key)
        await wait_until(lambda: len(latencies) >= args.latency_messages, within=60)
    finally:
        await bus.close()
    return Figures(
        name,
        statistics.median(rates),
        total / consume_s,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
    )


async def bench_raw(args: argparse.Namespace, prefix: str) -> Figures:
    """The same work on nats-py directly: the baseline the adapter is compared with."""
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream(publish_async_max_pending=args.window)
    stream, subject = f"{prefix}_RAW", f"{prefix.lower()}raw"
    await js.add_stream(name=stream, subjects=[f"{subject}.*"], max_age=3600, duplicate_window=120)
    try:
        rates = []
        for _ in range(args.rounds):
            payloads = [
                (event.id, encode_event(event), key) for event, key in make_events(args.messages)
            ]
            started = time.perf_counter()  # encoding is left out: a strict baseline
            acks = [
                await js.publish_async(
                    f"{subject}.{partition_of(key, args.partitions)}",
                    data,
                    headers={"Nats-Msg-Id": event_id, "Tl-Key": key},
                )
                for event_id, data, key in payloads
            ]
            await asyncio.gather(*acks)
            rates.append(args.messages / (time.perf_counter() - started))
        total = args.messages * args.rounds

        consumed = 0
        started = time.perf_counter()

        async def drain(partition: int) -> None:
            nonlocal consumed
            pull = await js.pull_subscribe(
                f"{subject}.{partition}",
                durable=f"consume_{partition}",
                stream=stream,
                config=api.ConsumerConfig(max_ack_pending=args.batch, ack_wait=30),
            )
            while consumed < total:
                try:
                    messages = await pull.fetch(args.batch, timeout=0.2)
                except TimeoutError:
                    continue
                for message in messages:
                    await message.ack()
                consumed += len(messages)

        await asyncio.gather(*(drain(p) for p in range(args.partitions)))
        consume_s = time.perf_counter() - started

        latencies = await raw_latency(js, stream, subject, args)
    finally:
        await js.delete_stream(stream)
        await nc.close()
    return Figures(
        "raw nats-py",
        statistics.median(rates),
        total / consume_s,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
    )


async def raw_latency(
    js: nats.js.JetStreamContext, stream: str, subject: str, args: argparse.Namespace
) -> list[float]:
    sent: dict[str, float] = {}
    latencies: list[float] = []
    stop = asyncio.Event()

    async def follow(pull: nats.js.JetStreamContext.PullSubscription) -> None:
        while not stop.is_set():
            try:
                messages: list[Msg] = await pull.fetch(1, timeout=0.2)
            except TimeoutError:
                continue
            for message in messages:
                event_id = (message.headers or {}).get("Nats-Msg-Id", "")
                if event_id in sent:
                    latencies.append(time.perf_counter() - sent[event_id])
                await message.ack()

    pulls = [
        await js.pull_subscribe(
            f"{subject}.{partition}",
            durable=f"latency_{partition}",
            stream=stream,
            config=api.ConsumerConfig(
                max_ack_pending=1, ack_wait=30, deliver_policy=api.DeliverPolicy.NEW
            ),
        )
        for partition in range(args.partitions)
    ]
    followers = [asyncio.create_task(follow(pull)) for pull in pulls]
    for event, key in make_events(args.latency_messages):
        sent[event.id] = time.perf_counter()
        await js.publish(
            f"{subject}.{partition_of(key, args.partitions)}",
            encode_event(event),
            headers={"Nats-Msg-Id": event.id, "Tl-Key": key},
        )
    await wait_until(lambda: len(latencies) >= args.latency_messages, within=60)
    stop.set()
    await asyncio.gather(*followers)
    return latencies


def report(rows: list[Figures]) -> None:
    print(f"{'':<14}{'publish msg/s':>15}{'consume msg/s':>15}{'p50 ms':>10}{'p99 ms':>10}")
    for row in rows:
        print(
            f"{row.name:<14}{row.publish_per_s:>15,.0f}{row.consume_per_s:>15,.0f}"
            f"{row.latency_p50_ms:>10.2f}{row.latency_p99_ms:>10.2f}"
        )
    by_name = {row.name: row for row in rows}
    if "nats adapter" in by_name and "raw nats-py" in by_name:
        adapter, raw = by_name["nats adapter"], by_name["raw nats-py"]
        print(
            f"nats adapter / raw: publish {adapter.publish_per_s / raw.publish_per_s:.2f}x, "
            f"consume {adapter.consume_per_s / raw.consume_per_s:.2f}x"
        )


async def main(args: argparse.Namespace) -> None:
    prefix = f"BENCH{uuid.uuid4().hex[:8].upper()}"

    async def memory() -> MemoryBus:
        bus = MemoryBus(MemoryBroker(partitions=args.partitions))
        await bus.start()
        return bus

    async def nats_adapter() -> NatsBus:
        bus = NatsBus(
            args.nats_url,
            partitions=args.partitions,
            stream_prefix=prefix,
            publish_window=args.window,
            poll_interval=0.2,
        )
        await bus.start()
        return bus

    rows = [await bench_adapter("memory", memory, args)]
    if args.nats:
        try:
            rows.append(await bench_raw(args, prefix))
            rows.append(await bench_adapter("nats adapter", nats_adapter, args))
        finally:
            await delete_bus_streams(args.nats_url, prefix)
    print(
        f"{args.rounds} x {args.messages:,} messages, {args.partitions} partitions, "
        f"window {args.window}, "
        f"consume batch {args.batch}, latency over {args.latency_messages:,} messages"
    )
    report(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages to publish")
    parser.add_argument("--rounds", type=int, default=3, help="publish rounds (median shown)")
    parser.add_argument("--latency-messages", type=int, default=1_000, help="latency samples")
    parser.add_argument("--partitions", type=int, default=8, help="partitions per topic")
    parser.add_argument("--window", type=int, default=512, help="publish acks in flight")
    parser.add_argument("--batch", type=int, default=100, help="consume fetch batch size")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--no-nats", dest="nats", action="store_false", help="memory only")
    return parser.parse_args()


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(parse_args()))

"""Event bus benchmark: publish and consume throughput, publish-to-handler latency.

Measures the memory adapter, the NATS adapter, and raw nats-py JetStream doing the same work
with the same pipelining (same in-flight ack window, same partitioned subjects, same
``Nats-Msg-Id`` header, same fetch batch), and prints the ratio adapter / raw.

    python bench/bus.py                      # 6 rounds of 10,000 messages, nats://127.0.0.1:4222
    python bench/bus.py --pairs 10 --messages 50000 --window 1024
    python bench/bus.py --no-nats            # memory adapter only

This 2-core machine is noisy: run in separate phases, the publish ratio swung from 0.58x to
1.08x. So raw and adapter runs are interleaved in ``--pairs`` rounds (raw then adapter, then
adapter then raw, alternating who goes first; an even count lets each go first equally often),
each round compares its own two runs, and the ratio reported is the median of the per-round
ratios; absolute figures are medians too. The default run takes about 30-45 seconds.

What one run measures (every run gets fresh streams, deleted afterwards):
* publish: one ``publish_many`` of ``--messages`` events (raw: ``publish_async`` for each
  pre-encoded event, then wait for every ack), messages per second until the last ack.
* consume: a batch consumer (``--batch`` events per fetch) subscribed after the publish,
  messages per second from subscribing until the last one is handled and acked.
* latency: ``--latency-messages`` events published one at a time (each awaited) while a
  single-event consumer runs; time from just before publish to the handler, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
import structlog
from nats.aio.msg import Msg
from nats.js import api

from benchkit import fetch_and_ack, publish_raw
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


def percentile(samples: Sequence[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


async def bench_adapter(
    name: str, make: Callable[[], Awaitable[MemoryBus | NatsBus]], args: argparse.Namespace
) -> Figures:
    """One run of the adapter made by ``make``: publish, then consume, then latency."""
    bus = await make()
    try:
        items = make_events(args.messages)
        started = time.perf_counter()
        await bus.publish_many(TOPIC, items)
        publish_s = time.perf_counter() - started
        total = args.messages

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
        total / publish_s,
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
        payloads = [
            (event.id, encode_event(event), key) for event, key in make_events(args.messages)
        ]
        started = time.perf_counter()  # encoding is left out: a strict baseline
        await publish_raw(js, subject, payloads, args.partitions)
        publish_s = time.perf_counter() - started
        total = args.messages

        consumed = [0]  # shared by the partitions' drains
        started = time.perf_counter()

        async def drain(partition: int) -> None:
            pull = await js.pull_subscribe(
                f"{subject}.{partition}",
                durable=f"consume_{partition}",
                stream=stream,
                config=api.ConsumerConfig(max_ack_pending=args.batch, ack_wait=30),
            )
            await fetch_and_ack(pull, args.batch, consumed, total)

        await asyncio.gather(*(drain(p) for p in range(args.partitions)))
        consume_s = time.perf_counter() - started

        latencies = await raw_latency(js, stream, subject, args)
    finally:
        await js.delete_stream(stream)
        await nc.close()
    return Figures(
        "raw nats-py",
        total / publish_s,
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


@dataclass
class Pair:
    first: str  # which of the two ran first in this round
    raw: Figures
    adapter: Figures

    @property
    def publish_ratio(self) -> float:
        return self.adapter.publish_per_s / self.raw.publish_per_s

    @property
    def consume_ratio(self) -> float:
        return self.adapter.consume_per_s / self.raw.consume_per_s


def median_figures(name: str, runs: Sequence[Figures]) -> Figures:
    return Figures(
        name,
        statistics.median(run.publish_per_s for run in runs),
        statistics.median(run.consume_per_s for run in runs),
        statistics.median(run.latency_p50_ms for run in runs),
        statistics.median(run.latency_p99_ms for run in runs),
    )


def report_rounds(pairs: Sequence[Pair]) -> None:
    print("per round (r = raw nats-py, a = nats adapter, ratio = a / r, first = which ran first):")
    print(
        f"{'round':>5}  {'first':<7}"
        f"{'pub r':>9}{'pub a':>9}{'ratio':>7}  "
        f"{'con r':>9}{'con a':>9}{'ratio':>7}  "
        f"{'p50 r':>7}{'p50 a':>7}{'p99 r':>7}{'p99 a':>7}"
    )
    for number, pair in enumerate(pairs, 1):
        print(
            f"{number:>5}  {pair.first:<7}"
            f"{pair.raw.publish_per_s:>9,.0f}{pair.adapter.publish_per_s:>9,.0f}"
            f"{pair.publish_ratio:>6.2f}x  "
            f"{pair.raw.consume_per_s:>9,.0f}{pair.adapter.consume_per_s:>9,.0f}"
            f"{pair.consume_ratio:>6.2f}x  "
            f"{pair.raw.latency_p50_ms:>7.2f}{pair.adapter.latency_p50_ms:>7.2f}"
            f"{pair.raw.latency_p99_ms:>7.2f}{pair.adapter.latency_p99_ms:>7.2f}"
        )
    raw = median_figures("raw", [pair.raw for pair in pairs])
    adapter = median_figures("adapter", [pair.adapter for pair in pairs])
    print(
        f"{'median':>5}  {'':<7}"
        f"{raw.publish_per_s:>9,.0f}{adapter.publish_per_s:>9,.0f}"
        f"{statistics.median(pair.publish_ratio for pair in pairs):>6.2f}x  "
        f"{raw.consume_per_s:>9,.0f}{adapter.consume_per_s:>9,.0f}"
        f"{statistics.median(pair.consume_ratio for pair in pairs):>6.2f}x  "
        f"{raw.latency_p50_ms:>7.2f}{adapter.latency_p50_ms:>7.2f}"
        f"{raw.latency_p99_ms:>7.2f}{adapter.latency_p99_ms:>7.2f}"
    )
    print()


def report_summary(rows: Sequence[Figures], pairs: Sequence[Pair], memory_runs: int) -> None:
    nats_runs = f", raw and adapter {len(pairs)} runs each" if pairs else ""
    print(f"medians (memory {memory_runs} runs{nats_runs}):")
    print(f"{'':<14}{'publish msg/s':>15}{'consume msg/s':>15}{'p50 ms':>10}{'p99 ms':>10}")
    for row in rows:
        print(
            f"{row.name:<14}{row.publish_per_s:>15,.0f}{row.consume_per_s:>15,.0f}"
            f"{row.latency_p50_ms:>10.2f}{row.latency_p99_ms:>10.2f}"
        )
    if pairs:
        publish = sorted(pair.publish_ratio for pair in pairs)
        consume = sorted(pair.consume_ratio for pair in pairs)
        print(
            "nats adapter / raw, median of per-round ratios: "
            f"publish {statistics.median(publish):.2f}x "
            f"(range {publish[0]:.2f}-{publish[-1]:.2f}), "
            f"consume {statistics.median(consume):.2f}x "
            f"(range {consume[0]:.2f}-{consume[-1]:.2f})"
        )


async def main(args: argparse.Namespace) -> None:
    print(f"command: {shlex.join(['python', *sys.argv])}")
    server = args.nats_url if args.nats else "off"
    print(
        f"{args.pairs} round(s) x {args.messages:,} messages, {args.partitions} partitions, "
        f"window {args.window}, consume batch {args.batch}, "
        f"latency over {args.latency_messages:,} messages, nats {server}"
    )
    print()
    run_id = uuid.uuid4().hex[:6].upper()

    async def memory() -> MemoryBus:
        bus = MemoryBus(MemoryBroker(partitions=args.partitions))
        await bus.start()
        return bus

    async def adapter_run(prefix: str) -> Figures:
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

        try:
            return await bench_adapter("nats adapter", nats_adapter, args)
        finally:
            await delete_bus_streams(args.nats_url, prefix)

    memory_runs = [await bench_adapter("memory", memory, args) for _ in range(args.memory_runs)]
    rows = [median_figures("memory", memory_runs)]
    pairs: list[Pair] = []
    if args.nats:
        for number in range(args.pairs):
            prefix = f"BENCH{run_id}R{number}"
            if number % 2 == 0:
                raw = await bench_raw(args, prefix)
                adapter = await adapter_run(prefix)
            else:
                adapter = await adapter_run(prefix)
                raw = await bench_raw(args, prefix)
            pairs.append(Pair("raw" if number % 2 == 0 else "adapter", raw, adapter))
        report_rounds(pairs)
        rows.append(median_figures("raw nats-py", [pair.raw for pair in pairs]))
        rows.append(median_figures("nats adapter", [pair.adapter for pair in pairs]))
    report_summary(rows, pairs, len(memory_runs))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages per run")
    parser.add_argument(
        "--pairs", type=int, default=6, help="rounds of one raw and one adapter run, interleaved"
    )
    parser.add_argument("--memory-runs", type=int, default=3, help="memory adapter runs")
    parser.add_argument("--latency-messages", type=int, default=500, help="latency samples")
    parser.add_argument("--partitions", type=int, default=8, help="partitions per topic")
    parser.add_argument("--window", type=int, default=512, help="publish acks in flight")
    parser.add_argument("--batch", type=int, default=100, help="consume fetch batch size")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--no-nats", dest="nats", action="store_false", help="memory only")
    args = parser.parse_args()
    if args.pairs < 1 or args.memory_runs < 1 or args.messages < 1:
        parser.error("--pairs, --memory-runs and --messages must be at least 1")
    return args


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(parse_args()))

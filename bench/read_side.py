"""Read side: fills per second applied by positions plus the order projection, and p99 lag.

Runs on the production adapters (NATS JetStream carries the events, PostgreSQL holds the
views), in two phases, each order being ``order.submitted`` (order.commands), then
``order.accepted`` and one ``order.filled`` (order.events), as execution publishes them:

1. **throughput**: a backlog of ``--fills`` orders is published while both projections are
   stopped; then the order projection and the positions projection start together and drain
   it. Fills/s is the backlog divided by the time until BOTH have applied every event.
2. **lag**: with both projections running, orders are offered at ``--rate`` fills/s for
   ``--lag-seconds``. Position lag is from the fill event's ``occurred_at`` (set when it is
   published) to the commit of its position row, as the projection measures it for
   ``tradeloom_position_update_lag_seconds``; projection lag likewise for the order view.

In the same run the baseline: PostgreSQL's bare single-row ``BEGIN; INSERT; COMMIT`` rate on
one connection and on 8. Everything (load generator included) runs on this machine.

    python bench/read_side.py [--fills 20000] [--rate 1000] [--lag-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog
from tradeloom.oms.projection import OrderProjection
from tradeloom.positions.projection import PositionProjection

from benchkit import (
    CORES,
    WARNINGS,
    Baseline,
    admin_execute,
    baseline,
    count_warnings,
    local_url,
    percentile,
    process_cpu,
    server_cpu,
    server_cpu_delta,
)
from tradeloom.accounts.repository import AccountRepository
from tradeloom.bootstrap import build_bus
from tradeloom.config import Settings
from tradeloom.domain.events import (
    Event,
    OrderAccepted,
    OrderFilled,
    OrderSubmitted,
    new_event,
)
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import SystemClock
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.messaging.port import EventBus
from tradeloom.messaging.topics import ORDER_COMMANDS, ORDER_EVENTS
from tradeloom.observability.metrics import Metrics
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.outbox import Outbox, OutboxRelay

ORDER_GROUP = "bench-orders"
POSITION_GROUP = "bench-positions"
EVENTS_PER_ORDER = 3  # submitted, accepted, filled


class RecordingHistogram:
    """Stands in for a prometheus histogram and keeps every observation (for exact p99)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def observe(self, value: float) -> None:
        self.samples.append(value)

    def labels(self, *_values: str) -> RecordingHistogram:
        return self


@dataclass
class Market:
    """Deterministic order flow: accounts, symbols and prices from one seed."""

    accounts: list[str]
    symbols: list[str]
    rng: random.Random

    def order_events(self) -> tuple[tuple[Event, str], tuple[Event, str], tuple[Event, str]]:
        """One order's submitted, accepted and filled events, each with its bus key."""
        account = self.rng.choice(self.accounts)
        symbol = self.rng.choice(self.symbols)
        side = Side.BUY if self.rng.random() < 0.55 else Side.SELL
        quantity = Decimal(self.rng.randint(1, 20))
        price = Decimal(self.rng.randint(9_000, 11_000)) / 100
        order_id, now = new_id(), datetime.now(UTC)
        correlation = new_id()

        def event(payload: Any) -> tuple[Event, str]:
            made = new_event(
                payload,
                occurred_at=datetime.now(UTC),
                correlation_id=correlation,
                account_id=account,
            )
            return made, account

        submitted = OrderSubmitted(
            order_id=order_id,
            client_order_id=order_id,
            symbol=symbol,
            side=side,
            order_type=OrderType.MARKET,
            quantity=quantity,
            time_in_force=TimeInForce.DAY,
        )
        filled = OrderFilled(
            order_id=order_id,
            fill_id=new_id(),
            symbol=symbol,
            side=side,
            quantity=quantity,
            price=price,
            fee=Decimal("0.35"),
            filled_at=now,
            cumulative_quantity=quantity,
            leaves_quantity=Decimal(0),
        )
        return (
            event(submitted),
            event(OrderAccepted(order_id=order_id, broker_order_id=f"B-{order_id}")),
            event(filled),
        )


async def publish_orders(bus: EventBus, orders: Sequence[tuple[tuple[Event, str], ...]]) -> None:
    """Each order's command to order.commands and its reports to order.events, in order."""
    await bus.publish_many(ORDER_COMMANDS.name, [events[0] for events in orders])
    await bus.publish_many(ORDER_EVENTS.name, [e for events in orders for e in events[1:]])


@dataclass
class Run:
    backlog: int = 0
    publish_s: float = 0.0
    drain_s: float = 0.0
    drained: bool = False
    orders_done_s: float = 0.0
    positions_done_s: float = 0.0
    cpu_s: float = 0.0
    servers: dict[str, float] = field(default_factory=dict)
    offered: int = 0
    lag_window: float = 0.0
    position_lag: list[float] = field(default_factory=list)


class Platform:
    """Just the read side: the bus, the database, the two projections and the outbox relay
    that publishes ``position.updated``."""

    def __init__(self, settings: Settings) -> None:
        clock = SystemClock()
        self.metrics = Metrics()
        self.position_lag = RecordingHistogram()
        self.metrics.position_update_lag_seconds = self.position_lag  # type: ignore[assignment]
        self.bus = build_bus(settings)
        self.database = Database(settings.database_url)
        self.relay = OutboxRelay(self.database, self.bus, clock=clock)
        self.orders = OrderProjection(
            self.bus, self.database, clock, metrics=self.metrics, group=ORDER_GROUP
        )
        self.positions = PositionProjection(
            self.bus,
            self.database,
            Outbox(clock),
            clock,
            metrics=self.metrics,
            notify=self.relay.notify,
            group=POSITION_GROUP,
        )

    def applied(self, group: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "tradeloom_events_projected_total", {"group": group, "outcome": "applied"}
        )
        return value or 0.0

    def fills_applied(self) -> float:
        return self.applied(POSITION_GROUP)

    def order_events_applied(self) -> float:
        return self.applied(ORDER_GROUP)


async def wait_until(predicate: Any, within: float, period: float = 0.02) -> float | None:
    """Seconds until ``predicate()`` holds, or None after ``within`` seconds."""
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > within:
            return None
        await asyncio.sleep(period)
    return time.perf_counter() - started


async def throughput(
    platform: Platform, market: Market, args: argparse.Namespace, run: Run
) -> None:
    orders = [market.order_events() for _ in range(args.fills)]
    started = time.perf_counter()
    for start in range(0, len(orders), 1000):
        await publish_orders(platform.bus, orders[start : start + 1000])
    run.publish_s = time.perf_counter() - started
    run.backlog = len(orders)
    print(f"published a backlog of {len(orders):,} orders in {run.publish_s:.1f} s; draining")

    cpu_before, servers_before = process_cpu(os.getpid()), server_cpu()
    started = time.perf_counter()
    await platform.orders.start()
    await platform.positions.start()
    fills, order_events = len(orders), len(orders) * EVENTS_PER_ORDER
    positions_done = asyncio.create_task(
        wait_until(lambda: platform.fills_applied() >= fills, args.drain)
    )
    orders_done = await wait_until(
        lambda: platform.order_events_applied() >= order_events, args.drain
    )
    positions_s = await positions_done
    run.drain_s = time.perf_counter() - started
    run.drained = orders_done is not None and positions_s is not None
    run.orders_done_s = orders_done or float("nan")
    run.positions_done_s = positions_s or float("nan")
    run.cpu_s = process_cpu(os.getpid()) - cpu_before
    run.servers = server_cpu_delta(servers_before, server_cpu())


async def lag(platform: Platform, market: Market, args: argparse.Namespace, run: Run) -> None:
    platform.position_lag.samples.clear()
    before = platform.fills_applied()
    interval = 1.0 / args.rate
    tick = 0.01  # publish what is due every 10 ms: about 10 orders a tick at 1,000/s
    started = time.perf_counter()
    deadline = started + args.lag_seconds
    while (now := time.perf_counter()) < deadline:
        due = int((now - started) / interval) - run.offered
        if due > 0:
            await publish_orders(platform.bus, [market.order_events() for _ in range(due)])
            run.offered += due
        await asyncio.sleep(tick)
    run.lag_window = time.perf_counter() - started
    await wait_until(lambda: platform.fills_applied() - before >= run.offered, args.drain)
    run.position_lag = list(platform.position_lag.samples)


def report(args: argparse.Namespace, run: Run, base: Baseline | None) -> None:
    rate = run.backlog / run.drain_s if run.drain_s else float("nan")
    rows = [
        (
            "load",
            f"{args.accounts} accounts, {args.symbols} symbols; each order = "
            "submitted + accepted + one fill",
        ),
        ("backlog published", f"{run.backlog:,} orders in {run.publish_s:.1f} s"),
        (
            "drained",
            f"{'all' if run.drained else 'NOT all'} in {run.drain_s:.2f} s: orders "
            f"{run.orders_done_s:.2f} s, positions {run.positions_done_s:.2f} s",
        ),
        (
            "fills applied (both projections)",
            f"{rate:,.0f} fills/s "
            f"({rate * EVENTS_PER_ORDER:,.0f} order events/s to the order view)",
        ),
        (
            "CPU while draining",
            f"bench process {run.cpu_s / run.drain_s:.2f} s/s of {CORES} cores; "
            + ", ".join(f"{k} {v / run.drain_s:.2f}" for k, v in run.servers.items()),
        ),
        (
            "lag phase",
            f"{run.offered:,} fills offered in {run.lag_window:.1f} s = "
            f"{run.offered / run.lag_window:,.0f}/s",
        ),
        (
            "position lag p50 / p99 / max",
            f"{percentile(run.position_lag, 50) * 1000:.1f} / "
            f"{percentile(run.position_lag, 99) * 1000:.1f} / "
            f"{max(run.position_lag, default=float('nan')) * 1000:.1f} ms "
            f"({len(run.position_lag):,} fills)",
        ),
    ]
    if base is not None:
        rows.append(
            (
                "baseline insert-commit",
                f"{base.single:,.0f}/s on 1 connection, "
                f"{base.concurrent:,.0f}/s on {base.connections}",
            )
        )
        rows.append(("fills/s / baseline (1 conn)", f"{rate / base.single:.2f}x"))
    if WARNINGS:
        rows.append(("warnings", ", ".join(f"{k} x{v}" for k, v in WARNINGS.most_common(5))))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


async def main(args: argparse.Namespace) -> None:
    token = uuid.uuid4().hex[:8]
    namespace = f"bench{token}"
    database = f"tl_bench_{token}"
    database_url = args.postgres_url.rsplit("/", 1)[0] + f"/{database}"
    await admin_execute(args.postgres_url, f'CREATE DATABASE "{database}"')
    base: Baseline | None = None
    run = Run()
    try:
        await upgrade_database(database_url)
        if args.baseline:
            base = await baseline(database_url, args.baseline_seconds, 8)
        settings = Settings(database_url=database_url, bus_url=args.nats_url, namespace=namespace)
        platform = Platform(settings)
        await platform.bus.start()
        await platform.relay.start()
        accounts = AccountRepository(platform.database)
        ids = [f"acct-{n:04d}" for n in range(args.accounts)]
        for account_id in ids:
            await accounts.create(account_id, f"user-{account_id}", 10_000_000)
        market = Market(ids, [f"SYM{n:02d}" for n in range(args.symbols)], random.Random(7))
        try:
            await throughput(platform, market, args, run)
            await lag(platform, market, args, run)
        finally:
            await platform.positions.stop()
            await platform.orders.stop()
            await platform.relay.close()
            await platform.bus.close()
            await platform.database.dispose()
    finally:
        await delete_bus_streams(args.nats_url, namespace.upper())
        await admin_execute(args.postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    report(args, run, base)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fills", type=int, default=20_000, help="orders in the backlog")
    parser.add_argument("--rate", type=float, default=1000, help="fills/s in the lag phase")
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--drain", type=float, default=120.0, help="max seconds to drain")
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--nats-url", type=local_url, default="nats://127.0.0.1:4222")
    parser.add_argument(
        "--postgres-url", type=local_url, default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    if args.fills < 1 or args.rate <= 0 or args.accounts < 1 or args.symbols < 1:
        parser.error("--fills, --rate, --accounts and --symbols must be positive")
    return args


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    structlog.configure(
        processors=[count_warnings],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    asyncio.run(main(parse_args()))

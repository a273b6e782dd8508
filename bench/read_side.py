"""Read side: fills per second applied by positions plus the order projection, and p99 lag.

Runs on the production adapters (NATS JetStream carries the events, PostgreSQL holds the
views). Each order is ``order.submitted`` (order.commands), then ``order.accepted`` and one
``order.filled`` (order.events), as execution publishes them. Three processes, as three
deployments would run them on one host:

* **the generator** publishes the orders' events;
* **the order projection** (``OrderProjection``) keeps the order views and their history;
* **the positions projection** (``PositionProjection`` and the outbox relay that publishes its
  ``position.updated``) keeps positions and cash.

Two phases:

1. **throughput**: a backlog of ``--fills`` orders is published while both projections are
   stopped; then both start together and drain it. Fills/s is the backlog divided by the
   time until BOTH have applied every event (each one's own time is shown too).
2. **lag**: with both projections running, orders are offered at ``--rate`` fills/s for
   ``--lag-seconds``. Position lag is from the fill event's ``occurred_at`` (set when the
   generator builds it, just before publishing) to the commit of its position row, as the
   projection measures it for ``tradeloom_position_update_lag_seconds``.

Besides fills/s and lag it reports what a fill costs, which stays comparable when other work
shares the machine: each process's CPU per fill while draining, and each projection's
transactions (one per batch) with the round trips each took (statements plus BEGIN and
COMMIT, counted on the projection's own connections; the relay has its own).

In the same run the baseline: PostgreSQL's bare single-row ``BEGIN; INSERT; COMMIT`` rate on
one connection and on 8. Everything, the load generator included, runs on this machine.

    python bench/read_side.py [--fills 20000] [--rate 1000] [--lag-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.connection import Connection
from typing import Any

import structlog
from sqlalchemy import event

from benchkit import (
    CORES,
    WARNINGS,
    Baseline,
    admin_execute,
    baseline,
    count_warnings,
    local_url,
    percentile,
    print_rows,
    process_cpu,
    server_cpu,
    server_cpu_delta,
)
from tradeloom.accounts.repository import AccountRepository
from tradeloom.bootstrap import build_bus, settle_heap
from tradeloom.config import Settings
from tradeloom.domain.events import Event, OrderAccepted, OrderFilled, OrderSubmitted, new_event
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import SystemClock
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.messaging.port import EventBus
from tradeloom.messaging.topics import ORDER_COMMANDS, ORDER_EVENTS
from tradeloom.observability.metrics import Metrics
from tradeloom.oms.projection import OrderProjection
from tradeloom.positions.projection import PositionProjection
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.outbox import Outbox, OutboxRelay

EVENTS_PER_ORDER = 3  # submitted, accepted, filled
Keyed = tuple[Event, str]


def _quiet_logs() -> None:
    logging.disable(logging.WARNING)
    structlog.configure(
        processors=[count_warnings],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


# --- the generator --------------------------------------------------------------------------


@dataclass
class Market:
    """Deterministic order flow: accounts, symbols, sides, sizes and prices from one seed."""

    accounts: list[str]
    symbols: list[str]
    rng: random.Random

    def order(self) -> tuple[Keyed, Keyed, Keyed]:
        """One order's submitted, accepted and filled events, each with its bus key."""
        account = self.rng.choice(self.accounts)
        symbol = self.rng.choice(self.symbols)
        side = Side.BUY if self.rng.random() < 0.55 else Side.SELL
        quantity = Decimal(self.rng.randint(1, 20))
        price = Decimal(self.rng.randint(9_000, 11_000)) / 100
        order_id, correlation = new_id(), new_id()

        def keyed(payload: Any) -> Keyed:
            now = datetime.now(UTC)
            made = new_event(
                payload, occurred_at=now, correlation_id=correlation, account_id=account
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
            filled_at=datetime.now(UTC),
            cumulative_quantity=quantity,
            leaves_quantity=Decimal(0),
        )
        accepted = OrderAccepted(order_id=order_id, broker_order_id=f"B-{order_id}")
        return keyed(submitted), keyed(accepted), keyed(filled)


async def publish_orders(bus: EventBus, orders: Sequence[tuple[Keyed, Keyed, Keyed]]) -> None:
    """Each order's command to order.commands and its reports to order.events, in order."""
    await bus.publish_many(ORDER_COMMANDS.name, [events[0] for events in orders])
    await bus.publish_many(ORDER_EVENTS.name, [e for events in orders for e in events[1:]])


async def _generate(
    pipe: Connection, settings: Settings, accounts: list[str], symbols: int
) -> None:
    loop = asyncio.get_running_loop()
    bus = build_bus(settings)
    await bus.start()
    market = Market(accounts, [f"SYM{n:02d}" for n in range(symbols)], random.Random(7))
    pipe.send("ready")
    while (command := await loop.run_in_executor(None, pipe.recv))[0] != "stop":
        if command[0] == "backlog":
            started = time.perf_counter()
            orders = [market.order() for _ in range(command[1])]
            for start in range(0, len(orders), 1000):
                await publish_orders(bus, orders[start : start + 1000])
            pipe.send(time.perf_counter() - started)
        else:  # ("paced", rate, seconds): publish what is due every 10 ms
            _, rate, seconds = command
            offered, started = 0, time.perf_counter()
            while (now := time.perf_counter()) < started + seconds:
                due = int((now - started) * rate) - offered
                if due > 0:
                    await publish_orders(bus, [market.order() for _ in range(due)])
                    offered += due
                await asyncio.sleep(0.01)
            pipe.send((offered, time.perf_counter() - started))
    await bus.close()


def _generator_main(pipe: Connection, settings: Settings, accounts: list[str], n: int) -> None:
    _quiet_logs()
    asyncio.run(_generate(pipe, settings, accounts, n))


# --- the projections ------------------------------------------------------------------------


class RecordingHistogram:
    """Stands in for a prometheus histogram and keeps every observation (for exact p99)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def observe(self, value: float) -> None:
        self.samples.append(value)

    def labels(self, *_values: str) -> RecordingHistogram:
        return self


@dataclass
class RoundTrips:
    """What a projection's database connections sent: statements, and the BEGIN and COMMIT
    the driver sends apart (each one round trip)."""

    statements: int = 0
    begins: int = 0
    commits: int = 0

    def count(self, database: Database) -> None:
        engine = database.engine.sync_engine
        # Sync seam: engine events run inside the driver's greenlet, synchronously.
        event.listen(engine, "before_cursor_execute", lambda *_: self._add("statements"))
        event.listen(engine, "begin", lambda *_: self._add("begins"))
        event.listen(engine, "commit", lambda *_: self._add("commits"))

    def _add(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> tuple[int, int, int]:
        return (self.statements, self.begins, self.commits)


async def _project(pipe: Connection, kind: str, settings: Settings) -> None:
    """Run one projection, started on "start", reporting what it applied on "stats"."""
    loop = asyncio.get_running_loop()
    clock = SystemClock()
    metrics = Metrics()
    lag = RecordingHistogram()
    metrics.position_update_lag_seconds = lag  # type: ignore[assignment]
    bus = build_bus(settings)
    database = Database(settings.database_url)
    trips = RoundTrips()
    trips.count(database)  # the projection's own: the relay has a database of its own
    relay_database: Database | None = None  # the positions process runs the outbox relay
    relay: OutboxRelay | None = None
    projection: OrderProjection | PositionProjection
    group = f"bench-{kind}"  # each projection is its own consumer group: both get every event
    if kind == "orders":
        projection = OrderProjection(bus, database, clock, metrics=metrics, group=group)
    else:
        relay_database = Database(settings.database_url)
        relay = OutboxRelay(relay_database, bus, clock=clock)
        projection = PositionProjection(
            bus, database, Outbox(clock), clock, metrics=metrics, notify=relay.notify, group=group
        )
    await bus.start()
    if relay is not None:
        await relay.start()
    settle_heap()
    pipe.send("ready")

    def applied() -> float:
        sample = metrics.registry.get_sample_value(
            "tradeloom_events_projected_total", {"group": group, "outcome": "applied"}
        )
        return sample or 0.0

    while (command := await loop.run_in_executor(None, pipe.recv)) != "stop":
        if command == "start":
            await projection.start()
            pipe.send("started")
        elif command == "reset_lag":
            lag.samples.clear()
            pipe.send("ok")
        else:  # "stats"
            pipe.send({"applied": applied(), "lag": list(lag.samples), "trips": trips.snapshot()})
    await projection.stop()
    if relay is not None:
        await relay.close()
    await bus.close()
    await database.dispose()
    if relay_database is not None:
        await relay_database.dispose()
    pipe.send("stopped")


def _projection_main(pipe: Connection, kind: str, settings: Settings) -> None:
    _quiet_logs()
    asyncio.run(_project(pipe, kind, settings))


# --- the run --------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: Any
    pipe: Connection

    async def ask(self, message: Any) -> Any:
        self.pipe.send(message)
        return await asyncio.get_running_loop().run_in_executor(None, self.pipe.recv)

    def cpu(self) -> float:
        return process_cpu(self.process.pid)


@dataclass
class Run:
    backlog: int = 0
    publish_s: float = 0.0
    drain_s: float = 0.0
    drained: bool = False
    done_s: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    servers: dict[str, float] = field(default_factory=dict)
    trips: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    offered: int = 0
    lag_window: float = 0.0
    position_lag: list[float] = field(default_factory=list)


async def wait_until(predicate: Callable[[], Any], within: float) -> float | None:
    """Seconds until the async ``predicate()`` holds, or None after ``within`` seconds."""
    started = time.perf_counter()
    while not await predicate():
        if time.perf_counter() - started > within:
            return None
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def drain(
    args: argparse.Namespace, run: Run, generator: Child, views: Child, positions: Child
) -> None:
    run.backlog = args.fills
    run.publish_s = await generator.ask(("backlog", args.fills))
    print(f"published a backlog of {args.fills:,} orders in {run.publish_s:.1f} s; draining")
    children = (views, positions)
    trips_before = {c.name: (await c.ask("stats"))["trips"] for c in children}
    cpu_before = {c.name: c.cpu() for c in children}
    servers_before = server_cpu()
    started = time.perf_counter()
    for child in children:
        await child.ask("start")
    targets = {views.name: args.fills * EVENTS_PER_ORDER, positions.name: args.fills}

    async def all_applied() -> bool:
        for child in children:
            if child.name not in run.done_s:
                stats = await child.ask("stats")
                if stats["applied"] >= targets[child.name]:
                    run.done_s[child.name] = time.perf_counter() - started
        return len(run.done_s) == len(children)

    run.drained = await wait_until(all_applied, args.drain) is not None
    run.drain_s = time.perf_counter() - started
    run.cpu = {c.name: (c.cpu() - cpu_before[c.name]) / run.drain_s for c in children}
    for child in children:
        after = (await child.ask("stats"))["trips"]
        statements, begins, commits = (
            a - b for a, b in zip(after, trips_before[child.name], strict=True)
        )
        run.trips[child.name] = (statements, begins, commits)
    run.servers = {
        name: cpu / run.drain_s
        for name, cpu in server_cpu_delta(servers_before, server_cpu()).items()
    }


async def lag(args: argparse.Namespace, run: Run, generator: Child, positions: Child) -> None:
    before = (await positions.ask("stats"))["applied"]
    await positions.ask("reset_lag")
    run.offered, run.lag_window = await generator.ask(("paced", args.rate, args.lag_seconds))

    async def caught_up() -> bool:
        return bool((await positions.ask("stats"))["applied"] - before >= run.offered)

    await wait_until(caught_up, args.drain)
    run.position_lag = (await positions.ask("stats"))["lag"]


def start_child(name: str, target: Callable[..., None], *args: Any) -> tuple[Child, Connection]:
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    process = spawn.Process(target=target, args=(theirs, *args), daemon=True, name=name)
    process.start()
    return Child(name, process, ours), theirs


async def read_side(args: argparse.Namespace, settings: Settings, run: Run) -> None:
    database = Database(settings.database_url)
    accounts = [f"acct-{n:04d}" for n in range(args.accounts)]
    repository = AccountRepository(database)
    for account_id in accounts:
        await repository.create(account_id, f"user-{account_id}", 10_000_000)
    await database.dispose()
    generator, _ = start_child("generator", _generator_main, settings, accounts, args.symbols)
    views, _ = start_child("order projection", _projection_main, "orders", settings)
    positions, _ = start_child("positions", _projection_main, "positions", settings)
    children = (generator, views, positions)
    loop = asyncio.get_running_loop()
    try:
        for child in children:
            assert await loop.run_in_executor(None, child.pipe.recv) == "ready"
        await drain(args, run, generator, views, positions)
        await lag(args, run, generator, positions)
    finally:
        for child in children:
            child.pipe.send(("stop",) if child is generator else "stop")
        for child in children:
            await loop.run_in_executor(None, child.process.join, 15)


def _per_batch(trips: dict[str, tuple[int, int, int]]) -> list[str]:
    """Each projection's transactions (one a batch) and round trips per transaction."""
    described = []
    for name, (statements, begins, commits) in trips.items():
        per = (statements + begins + commits) / commits if commits else float("nan")
        described.append(f"{name} {commits:,} x {per:.1f} round trips")
    return described


def report(args: argparse.Namespace, run: Run, base: Baseline | None) -> None:
    rate = run.backlog / run.drain_s if run.drain_s else float("nan")
    lag_ms = [sample * 1000 for sample in run.position_lag]
    rows = [
        (
            "load",
            f"{args.accounts} accounts, {args.symbols} symbols; each order = submitted + accepted"
            " + one fill; generator, order projection and positions in 3 processes",
        ),
        ("backlog", f"{run.backlog:,} orders published in {run.publish_s:.1f} s"),
        (
            "drained",
            f"{'all' if run.drained else 'NOT all'} in {run.drain_s:.2f} s ("
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in run.done_s.items())
            + ")",
        ),
        (
            "fills applied (both projections)",
            f"{rate:,.0f} fills/s "
            f"({rate * EVENTS_PER_ORDER:,.0f} order events/s to the order view)",
        ),
        (
            "CPU while draining (s/s)",
            ", ".join(f"{k} {v:.2f}" for k, v in (run.cpu | run.servers).items())
            + f" (of {CORES} cores)",
        ),
        (
            "CPU per fill while draining",
            ", ".join(f"{k} {v / rate * 1e6:,.0f} us" for k, v in (run.cpu | run.servers).items()),
        ),
        ("transactions while draining", ", ".join(_per_batch(run.trips))),
        (
            "lag phase",
            f"{run.offered:,} fills offered in {run.lag_window:.1f} s = "
            f"{run.offered / run.lag_window:,.0f}/s",
        ),
        (
            "position lag p50 / p99 / max",
            f"{percentile(lag_ms, 50):.1f} / {percentile(lag_ms, 99):.1f} / "
            f"{max(lag_ms, default=float('nan')):.1f} ms ({len(lag_ms):,} fills)",
        ),
    ]
    if base is not None:
        rows += [
            (
                "baseline insert-commit",
                f"{base.single:,.0f}/s on 1 connection, {base.concurrent:,.0f}/s on "
                f"{base.connections}",
            ),
            ("fills/s / baseline (1 conn)", f"{rate / base.single:.2f}x"),
        ]
    if WARNINGS:
        rows.append(("warnings", ", ".join(f"{k} x{v}" for k, v in WARNINGS.most_common(5))))
    print_rows(rows, indent="")


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
        await read_side(args, settings, run)
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
    _quiet_logs()
    asyncio.run(main(parse_args()))

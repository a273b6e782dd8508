"""What one fill costs each read-side projection: CPU per fill and round trips per batch.

The bus, the relay and the other projection are left out: the read side's order flow (the
``Market`` of ``read_side.py``: each order a submission on order.commands, then its acceptance
and one fill on order.events) is handed to ``OrderProjection.handle`` or
``PositionProjection.handle`` directly, in batches of ``--batch`` events, one batch at a time
(a commands batch, then an events batch, as one consumer of each topic would), on a fresh
PostgreSQL database. Measured after one warm-up batch of each kind:

* CPU per fill of this process (user + system), and of the PostgreSQL backend serving it
  (the heap settled first, as a projection process settles it once started);
* round trips per batch: statements, plus the BEGIN and COMMIT the driver sends apart.

Because only this process and its one backend are measured, the figures stay comparable when
other work shares the machine (``read_side.py``'s fills/s do not).

    python bench/projection_cost.py orders|positions [--fills 10000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]

from benchkit import admin_execute, local_url, print_rows, process_cpu
from read_side import Market, RoundTrips
from tradeloom.accounts.repository import AccountRepository
from tradeloom.bootstrap import settle_heap
from tradeloom.domain.events import Event, OrderFilled
from tradeloom.domain.time import SystemClock
from tradeloom.messaging.memory import MemoryBus
from tradeloom.oms.projection import OrderProjection
from tradeloom.positions.projection import PositionProjection
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.outbox import Outbox

Projection = OrderProjection | PositionProjection


@dataclass
class Cost:
    fills: int
    batches: int
    cpu_s: float
    backend_cpu_s: float
    trips: tuple[int, int, int]


def streams(kind: str, fills: int, batch: int) -> list[list[list[Event]]]:
    """The events each topic's consumer would hand over, cut into batches."""
    accounts = [f"acct-{n:04d}" for n in range(500)]
    market = Market(accounts, [f"SYM{n:02d}" for n in range(20)], random.Random(7))
    orders = [market.order() for _ in range(fills)]
    commands = [order[0][0] for order in orders]
    reports = [keyed[0] for order in orders for keyed in order[1:]]
    topics = [commands, reports] if kind == "orders" else [reports]
    return [[topic[i : i + batch] for i in range(0, len(topic), batch)] for topic in topics]


async def drive(projection: Projection, batches: Sequence[Sequence[list[Event]]]) -> int:
    """One batch of each topic in turn; how many batches were handled."""
    handled = 0
    for i in range(max(len(topic) for topic in batches)):
        for topic in batches:
            if i < len(topic):
                await projection.handle(topic[i])
                handled += 1
    return handled


async def measure(args: argparse.Namespace, url: str) -> Cost:
    database = Database(url)
    repository = AccountRepository(database)
    for n in range(500):
        await repository.create(f"acct-{n:04d}", f"user-{n}", 10_000_000)
    clock = SystemClock()
    projection: Projection
    if args.kind == "orders":
        projection = OrderProjection(MemoryBus(), database, clock)
    else:
        projection = PositionProjection(MemoryBus(), database, Outbox(clock), clock)
    batches = streams(args.kind, args.fills, args.batch)
    await drive(projection, [[topic.pop(0)] for topic in batches])  # warm up
    settle_heap()  # as a projection process does once started: the events built here stay
    fills = sum(
        isinstance(event.payload, OrderFilled) for topic in batches for b in topic for event in b
    )
    probe = await asyncpg.connect(url)
    try:
        backends = [
            row[0]
            for row in await probe.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
        ]
    finally:
        await probe.close()
    trips = RoundTrips()
    trips.count(database)
    backend_before = sum(process_cpu(pid) for pid in backends)
    started = time.process_time()
    handled = await drive(projection, batches)
    cost = Cost(
        fills=fills,
        batches=handled,
        cpu_s=time.process_time() - started,
        backend_cpu_s=sum(process_cpu(pid) for pid in backends) - backend_before,
        trips=trips.snapshot(),
    )
    await database.dispose()
    return cost


def report(args: argparse.Namespace, cost: Cost) -> None:
    statements, begins, commits = cost.trips
    rows = [
        ("projection", f"{args.kind}, batches of up to {args.batch} events"),
        ("fills", f"{cost.fills:,} in {cost.batches:,} batches"),
        ("CPU per fill", f"{cost.cpu_s / cost.fills * 1e6:,.0f} us (this process)"),
        ("PostgreSQL per fill", f"{cost.backend_cpu_s / cost.fills * 1e6:,.0f} us (its backend)"),
        (
            "round trips per batch",
            f"{(statements + begins + commits) / cost.batches:.1f}"
            f" ({statements / cost.batches:.1f} statements + BEGIN + COMMIT)",
        ),
    ]
    print_rows(rows, indent="")


async def main(args: argparse.Namespace) -> None:
    name = f"tl_cost_{uuid.uuid4().hex[:8]}"
    url = args.postgres_url.rsplit("/", 1)[0] + f"/{name}"
    await admin_execute(args.postgres_url, f'CREATE DATABASE "{name}"')
    try:
        await upgrade_database(url)
        cost = await measure(args, url)
    finally:
        await admin_execute(args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    report(args, cost)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["orders", "positions"])
    parser.add_argument("--fills", type=int, default=10_000, help="orders, one fill each")
    parser.add_argument("--batch", type=int, default=500, help="events per batch")
    parser.add_argument(
        "--postgres-url", type=local_url, default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    if args.fills < 2 * args.batch or args.batch < 1:
        parser.error("--batch must be positive and --fills at least two batches")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

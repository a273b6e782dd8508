"""Order-path benchmark: command handler → risk → outbox → bus → execution → paper broker → fill.

Runs the write path of the platform on the PRODUCTION adapters (PostgreSQL, NATS JetStream,
Redis) as ``build_platform`` wires them, split by service as a deployment would run it: THIS
process is the API (the OMS command handler and pre-trade risk, with its outbox relay; it runs
no consuming service), and ``--workers`` worker processes run ``--worker-services`` (market
data and execution by default: the broker gateway with the paper broker, the execution
engine, the OMS order-state updater and risk's exposure updater). ``--workers 0`` runs those
services in this process too. In the same run, the database's bare insert-commit rate is the
baseline.

    python bench/order_path.py                      # 1,100 orders/s offered for 15 s
    python bench/order_path.py --rate 0             # as fast as the placers can go
    python bench/order_path.py --workers 0          # everything in one process
    python bench/order_path.py --profile /tmp/prof  # py-spy this process and its workers

Every process runs on uvloop, as ``tradeloom serve`` does (uvicorn picks it when installed).

The load: ``--accounts`` accounts (one user each, ample cash), market BUY orders of one share
on ``--symbols`` symbols, offered open-loop at ``--rate`` orders/s by ``--placers`` asyncio
tasks calling ``platform.orders.place`` directly (no HTTP). Order ``i`` is due at
``start + i / rate``; a placer takes the next due order, sleeps until it is due, places it.
If every placer is busy the order starts late: that lateness is reported separately (the
acknowledgement latency is the ``await place(...)`` alone, the brief's definition). There
must be enough placers to offer the rate: at most ``placers / acknowledgement latency``
orders can be in flight a second (Little's law), so 64 placers at 70 ms capped the offered
load near 900/s whatever the platform could take (the bench then reports orders "due but
never started"). The default, 256, offers 1,100/s up to acknowledgements of ~230 ms. The
per-user order-rate and open-order limits are raised so risk refuses nothing legitimate.
A quote pump publishes a fresh quote per symbol every ``--quote-interval`` seconds through
the market-data publisher (bus → the worker's cache writer and paper broker), so prices stay
fresh for risk and the paper broker always shows size to fill against.

Figures:

* placed/s: orders acknowledged (``place`` returned) during the offered window / window;
* filled/s: ``order.filled`` events received from the bus (this process consumes
  ``order.events`` as its own group) during the window / window; then the drain until every
  order's fill event arrived;
* ack p50/p99/max: ``await orders.place(...)``;
* risk check p50/p99/max: every ``RiskEngine.check_and_reserve`` (``risk_check_observer``);
* submit→fill event p50/p99/max: from ``place`` returning to that order's ``order.filled``
  event arriving here from the bus;
* BASELINE: asyncpg, ``BEGIN; INSERT one row; COMMIT`` in a loop into a scratch table for
  ``--baseline-seconds``, on one connection and on 8 concurrent connections;
* CPU seconds per wall second of this process, of each worker and of postgres, nats-server
  and redis-server (from /proc, over the window plus drain), peak RSS, the event-loop lag.

Everything is throwaway: a database ``tl_bench_<random>`` (created, migrated, dropped), a NATS
stream prefix and Redis namespace ``bench<random>`` (streams deleted, keys removed). Only
127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from asyncio.subprocess import PIPE
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
import structlog
import uvloop
from sqlalchemy import event as sa_event
from sqlalchemy import text

from benchkit import (
    CLOCK_TICKS,
    CORES,
    FIRST_ERRORS,
    WARNINGS,
    Baseline,
    admin_execute,
    baseline,
    count_warnings,
    drop_bench_run,
    local_url,
    loop_lag,
    peak_rss_mb,
    percentile,
    print_rows,
    print_top_functions,
    process_cpu,
    server_cpu,
    server_cpu_delta,
)
from tradeloom.bootstrap import Platform, build_platform, settle_heap
from tradeloom.cache.redis import RedisCache
from tradeloom.config import Settings, load_settings
from tradeloom.domain.commands import PlaceOrder
from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import Event, OrderFilled, PriceUpdate
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.market_data.universe import default_universe
from tradeloom.messaging.port import ConsumerOptions
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.storage.migrate import upgrade_database

# --- CPU and memory, from /proc -------------------------------------------------------------


def _total_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, for the share other processes used."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


# --- the order path -------------------------------------------------------------------------


@dataclass
class Run:
    offered: int = 0
    not_started: int = 0  # due in the window, but no placer was free before it ended
    window: float = 0.0
    placed_in_window: int = 0
    placed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    filled_in_window: int = 0
    filled: int = 0
    drain_s: float = 0.0
    drained: bool = False
    ack: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)  # start of place() after it was due
    risk: list[float] = field(default_factory=list)
    risk_outcomes: Counter[str] = field(default_factory=Counter)
    to_fill: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    cpu: float = 0.0
    rss_mb: float = 0.0
    servers: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    quotes: int = 0
    pool: str = ""
    statements: Counter[str] = field(default_factory=Counter)  # by SQLAlchemy, first word
    checkouts: int = 0  # connections taken from the pool (each pre-pinged)
    pg_xacts: dict[str, int] = field(default_factory=dict)  # pg_stat_database deltas
    redis_commands: int = 0
    redis_pipelined: tuple[int, int] | None = None  # this process: (commands, pipelines)
    pg_sessions: Counter[str] = field(default_factory=Counter)
    pg_samples: int = 0
    profile: str | None = None
    worker_pids: list[int] = field(default_factory=list)
    worker_cpu: list[float] = field(default_factory=list)
    worker_rss_mb: list[float] = field(default_factory=list)


class FillProbe:
    """Consumes ``order.events`` as its own group and stamps each order's ``order.filled``
    when it arrives: the fill event as any consumer sees it."""

    def __init__(self) -> None:
        self.placed_at: dict[str, float] = {}
        self.filled_at: dict[str, float] = {}
        self.in_window_until = float("inf")
        self.filled_in_window = 0
        self.all_filled = asyncio.Event()
        self.expected: int | None = None

    async def start(self, platform: Platform) -> None:
        await platform.bus.subscribe_batch(
            ORDER_EVENTS.name,
            "bench-fill-probe",
            self.on_events,
            ConsumerOptions(max_batch=500, max_wait=0.002),
        )

    async def on_events(self, events: Sequence[Event]) -> None:
        now = time.perf_counter()
        for event in events:
            if isinstance(event.payload, OrderFilled):
                order_id = event.payload.order_id
                if order_id not in self.filled_at:
                    self.filled_at[order_id] = now
                    if now <= self.in_window_until:
                        self.filled_in_window += 1
        self.check_done()

    def check_done(self) -> None:
        if self.expected is not None and len(self.filled_at) >= self.expected:
            self.all_filled.set()


def _quote(symbol: str, mid: Decimal, tick: Decimal, flip: int) -> PriceUpdate:
    """A fresh quote one tick either side of ``mid``, nudged every time so it is news."""
    bid = mid - tick * (1 + flip % 2)
    return PriceUpdate(
        symbol=symbol,
        bid=bid,
        ask=mid + tick,
        last=None,
        volume=Decimal(0),
        exchange_time=datetime.now(UTC),
        venue="BENCH",
    )


async def _quote_pump(
    platform: Platform, symbols: Sequence[tuple[str, Decimal, Decimal]], interval: float
) -> int:
    sent = 0
    try:
        while True:
            for symbol, mid, tick in symbols:
                await platform.market_data.publisher.submit(_quote(symbol, mid, tick, sent))
                sent += 1
            await asyncio.sleep(interval)
    except asyncio.CancelledError:
        return sent


async def _sample_sessions(url: str, run: Run, period: float = 0.1) -> None:
    """Every ``period``: what the bench database's sessions are doing (state, wait event,
    first words of the query), to see where the order path waits inside PostgreSQL."""
    conn = await asyncpg.connect(url)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT state, wait_event_type, wait_event, left(query, 48) AS query"
                " FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state <> 'idle'"
            )
            run.pg_samples += 1
            for row in rows:
                wait = f"{row['wait_event_type']}:{row['wait_event']}" if row["wait_event"] else ""
                query = " ".join((row["query"] or "").split())
                run.pg_sessions[f"{row['state']} {wait} | {query}"] += 1
            await asyncio.sleep(period)
    finally:
        await conn.close()


async def _pg_xacts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    return {
        "commit": int(row["xact_commit"]),
        "rollback": int(row["xact_rollback"]),
        "sessions": int(row["sessions"]) - 1,  # less this one
    }


async def _redis_commands(url: str) -> int:
    client = aioredis.from_url(url)
    try:
        return int((await client.info("stats"))["total_commands_processed"])
    finally:
        await client.aclose()


def _count_statements(platform: Platform, run: Run) -> None:
    """Count what SQLAlchemy sends (first word of each statement) and pool checkouts."""
    engine = platform.database.engine.sync_engine

    @sa_event.listens_for(engine, "before_cursor_execute")
    def _statement(*args: Any) -> None:
        statement = str(args[2]).lstrip()
        run.statements[statement.split(None, 1)[0].upper() if statement else "?"] += 1

    @sa_event.listens_for(engine, "checkout")
    def _checkout(*_args: Any) -> None:
        run.checkouts += 1


async def _wait_for_prices(platform: Platform, symbols: Sequence[str]) -> None:
    async with asyncio.timeout(30):
        while True:
            found = await platform.market_data.last_prices.last_many(list(symbols))
            if all(found.get(s) is not None for s in symbols):
                return
            await asyncio.sleep(0.05)


def _start_profiler(args: argparse.Namespace) -> tuple[str, subprocess.Popen[bytes]] | None:
    if not args.profile:
        return None
    os.makedirs(args.profile, exist_ok=True)
    path = os.path.join(args.profile, "order_path.txt")
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    command = [py_spy, "record", "--pid", str(os.getpid()), "--rate", "100", "--nonblocking"]
    command += ["--subprocesses"]
    command += ["--format", "raw", "--duration", str(max(1, round(args.duration)))]
    command += ["--output", path]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path, process


def _with_services(settings: Settings, services: str) -> Settings:
    return Settings(**{**settings.model_dump(), "services": services})


def _environment(settings: Settings) -> dict[str, str]:
    """The settings as the ``TRADELOOM_*`` variables a worker process reads."""
    values = {f"TRADELOOM_{k.upper()}": str(v) for k, v in settings.model_dump().items()}
    return {**os.environ, **{k: v for k, v in values.items() if v != "None"}}


WORKER_SCRIPT = os.path.abspath(__file__)


async def _start_workers(
    args: argparse.Namespace, settings: Settings
) -> list[asyncio.subprocess.Process]:
    """Launch ``--workers`` processes running the worker services; return once each said it
    started (its consumers joined their groups)."""
    environment = _environment(_with_services(settings, args.worker_services))
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, WORKER_SCRIPT, "--worker", env=environment, stdout=PIPE
        )
        for _ in range(args.workers)
    ]
    for worker in workers:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), timeout=60)
        if line.strip() != b"ready":
            raise RuntimeError(f"worker {worker.pid} did not start: {line!r}")
    return workers


async def _stop_workers(workers: Sequence[asyncio.subprocess.Process]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        await asyncio.wait_for(worker.wait(), timeout=30)


async def worker() -> None:
    """A worker process: the platform with the services ``TRADELOOM_SERVICES`` names, until
    SIGTERM. Says ``ready`` on stdout once every consumer joined its group."""
    settings = load_settings()
    platform = build_platform(settings)
    await platform.start()
    settle_heap()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        await platform.close()


async def order_path(args: argparse.Namespace, settings: Settings) -> Run:
    run = Run()
    risk_samples: list[tuple[float, str]] = []
    workers = await _start_workers(args, settings)
    run.worker_pids = [w.pid for w in workers]
    local = "none" if workers else args.worker_services
    platform = build_platform(
        _with_services(settings, local),
        risk_check_observer=lambda seconds, outcome: risk_samples.append((seconds, outcome)),
    )
    probe = FillProbe()
    await platform.start()
    await probe.start(platform)
    settle_heap()
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []
    try:
        universe = default_universe()[: args.symbols]
        symbols = [(i.symbol, i.reference_price, i.tick_size) for i in universe]
        accounts = [f"bench-{n:04d}" for n in range(args.accounts)]
        for number, account in enumerate(accounts):
            await platform.accounts.create(account, f"user-{number:04d}", Decimal(args.cash))
        pump = asyncio.create_task(_quote_pump(platform, symbols, args.quote_interval))
        await _wait_for_prices(platform, [s for s, _, _ in symbols])
        tasks.append(asyncio.create_task(loop_lag(run.lag)))
        tasks.append(asyncio.create_task(_sample_sessions(args.database_url, run)))

        total = round(args.rate * args.duration) if args.rate else None
        next_index = 0
        stop_at = float("inf")
        placed_at = probe.placed_at

        async def placer() -> None:
            nonlocal next_index
            while True:
                index = next_index
                if total is not None and index >= total:
                    return
                next_index += 1
                if total is not None:
                    due = started + index / args.rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    begun = time.perf_counter()
                    if begun >= stop_at:  # the window is over: not offered, not placed
                        run.not_started = total - index
                        next_index = total
                        return
                    run.late.append(begun - due)
                else:
                    begun = time.perf_counter()
                    if begun >= stop_at:
                        return
                account = accounts[index % len(accounts)]
                symbol = symbols[(index // len(accounts)) % len(symbols)][0]
                command = PlaceOrder(
                    account_id=account,
                    client_order_id=f"c{index}",
                    symbol=symbol,
                    side=Side.BUY,
                    order_type=OrderType.MARKET,
                    quantity=Decimal(1),
                    time_in_force=TimeInForce.DAY,
                    correlation_id=new_id(),
                )
                try:
                    receipt = await platform.orders.place(command)
                except DomainError as exc:
                    run.refused[exc.code] += 1
                    continue
                except Exception as exc:
                    run.refused[type(exc).__name__] += 1
                    continue
                done = time.perf_counter()
                run.ack.append(done - begun)
                placed_at[receipt.order_id] = done
                if done <= started + args.duration:
                    run.placed_in_window += 1

        xacts0 = await _pg_xacts(args.database_url)
        redis0 = await _redis_commands(args.redis_url)
        pipelined0 = (
            (platform.cache.batcher.pipelined, platform.cache.batcher.pipelines)
            if isinstance(platform.cache, RedisCache)
            else (0, 0)
        )
        _count_statements(platform, run)
        cpu0, servers0, machine0 = process_cpu(os.getpid()), server_cpu(), _total_cpu()
        workers0 = [process_cpu(pid) for pid in run.worker_pids]
        profiler = _start_profiler(args)
        started = time.perf_counter()
        stop_at = started + args.duration
        probe.in_window_until = stop_at
        await asyncio.gather(*(placer() for _ in range(args.placers)))
        run.window = max(args.duration, time.perf_counter() - started)
        run.offered = next_index if total is None else total - run.not_started
        run.placed = len(placed_at)
        probe.expected = run.placed
        probe.check_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(probe.all_filled.wait(), timeout=args.drain)
        run.drained = probe.all_filled.is_set()
        ended = time.perf_counter()
        run.drain_s = max(0.0, ended - stop_at)
        wall = ended - started
        cpu1, servers1, machine1 = process_cpu(os.getpid()), server_cpu(), _total_cpu()
        run.cpu = (cpu1 - cpu0) / wall
        run.worker_cpu = [
            (process_cpu(pid) - before) / wall
            for pid, before in zip(run.worker_pids, workers0, strict=True)
        ]
        run.worker_rss_mb = [peak_rss_mb(pid) for pid in run.worker_pids]
        run.servers = {k: v / wall for k, v in server_cpu_delta(servers0, servers1).items()}
        run.machine_busy = (machine1[0] - machine0[0]) / wall
        run.rss_mb = peak_rss_mb(os.getpid())
        xacts1 = await _pg_xacts(args.database_url)
        run.pg_xacts = {k: xacts1[k] - xacts0[k] for k in xacts1}
        run.redis_commands = await _redis_commands(args.redis_url) - redis0
        if isinstance(platform.cache, RedisCache):
            batcher = platform.cache.batcher
            run.redis_pipelined = (
                batcher.pipelined - pipelined0[0],
                batcher.pipelines - pipelined0[1],
            )
        run.filled_in_window = probe.filled_in_window
        run.filled = len(probe.filled_at)
        run.to_fill = [
            probe.filled_at[order_id] - at
            for order_id, at in placed_at.items()
            if order_id in probe.filled_at
        ]
        run.risk = [seconds for seconds, _ in risk_samples]
        run.risk_outcomes = Counter(outcome for _, outcome in risk_samples)
        run.pool = platform.database.engine.pool.status()
        pump.cancel()
        run.quotes = await pump
        if profiler is not None:
            path, process = profiler
            await loop.run_in_executor(None, process.wait)
            run.profile = path
        async with platform.database.connect() as conn:
            rows = await conn.execute(text("SELECT status, count(*) FROM orders GROUP BY status"))
            run.statuses = {str(status): int(count) for status, count in rows}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await platform.close()
        await _stop_workers(workers)
    return run


# --- setup, teardown, report ----------------------------------------------------------------


def _ms(samples: Sequence[float]) -> str:
    ordered = sorted(samples)
    if not ordered:
        return "n/a"
    p50, p99 = percentile(ordered, 50) * 1000, percentile(ordered, 99) * 1000
    return f"{p50:.1f} / {p99:.1f} / {ordered[-1] * 1000:.0f} ms"


def _others(run: Run) -> float:
    ours = run.cpu + sum(run.worker_cpu) + sum(run.servers.values())
    return max(0.0, run.machine_busy - ours)


def _p99(samples: Sequence[float]) -> float:
    return percentile(sorted(samples), 99) * 1000


def report(args: argparse.Namespace, run: Run, base: Baseline | None) -> None:
    window = run.window
    placed_rate = run.placed_in_window / window
    filled_rate = run.filled_in_window / window
    ack_p99, risk_p99 = _p99(run.ack), _p99(run.risk)
    per = max(run.placed, 1)
    offered = "max" if not args.rate else f"{args.rate:,.0f}/s"
    rows = [
        (
            "load",
            f"{offered} offered for {args.duration:g} s by {args.placers} placers; "
            f"{args.accounts} accounts, {args.symbols} symbols, market BUY 1 share; "
            f"{args.workers} worker(s), {args.partitions} bus partitions",
        ),
        (
            "offered (started)",
            f"{run.offered:,} orders in {window:.1f} s = {run.offered / window:,.0f}/s"
            + (
                f"; {run.not_started:,} due but never started (too few --placers: the"
                " generator, not the platform, capped the load)"
                if run.not_started > run.offered // 100
                else f"; {run.not_started:,} due but never started"
                if run.not_started
                else ""
            ),
        ),
        (
            "placed (acknowledged)",
            f"{run.placed_in_window:,} in window = {placed_rate:,.0f} orders/s"
            f" ({run.placed:,} in all)",
        ),
        (
            "refused",
            ", ".join(f"{k} x{v}" for k, v in run.refused.most_common()) or "none",
        ),
        (
            "filled (fill events received)",
            f"{run.filled_in_window:,} in window = {filled_rate:,.0f} orders/s",
        ),
        (
            "drain after window",
            f"{run.drain_s:.1f} s, {'all filled' if run.drained else 'NOT all filled'}"
            f" ({run.filled:,} of {run.placed:,})",
        ),
        ("ack (await place) p50/p99/max", _ms(run.ack)),
        ("  start lateness p50/p99/max", _ms(run.late) + " (placer busy: open-loop queueing)"),
        ("risk check p50/p99/max", _ms(run.risk) + f" over {len(run.risk):,} checks"),
        ("submit→fill event p50/p99/max", _ms(run.to_fill)),
        ("event-loop lag p50/p99/max", _ms(run.lag) + " (this process; 10 ms sleeps)"),
        (
            "CPU this process",
            f"{run.cpu:.2f} s/s, peak RSS {run.rss_mb:.0f} MB (placers + API"
            + (")" if run.worker_pids else f" + {args.worker_services})"),
        ),
        *[
            (
                f"CPU worker {number} ({args.worker_services})",
                f"{cpu:.2f} s/s, peak RSS {rss:.0f} MB",
            )
            for number, (cpu, rss) in enumerate(
                zip(run.worker_cpu, run.worker_rss_mb, strict=True), start=1
            )
        ],
        (
            "CPU servers",
            ", ".join(f"{name} {cpu:.2f}" for name, cpu in run.servers.items()) + " s/s",
        ),
        (
            "CPU machine",
            f"{run.machine_busy:.2f} s/s busy of {CORES} cores (others: {_others(run):.2f})",
        ),
        ("orders by status", ", ".join(f"{k} {v:,}" for k, v in sorted(run.statuses.items()))),
        ("quotes published", f"{run.quotes:,} (every {args.quote_interval * 1000:.0f} ms/symbol)"),
        ("db pool at end", run.pool),
        (
            "per placed order (window+drain)",
            f"{run.pg_xacts.get('commit', 0) / per:.1f} pg commits, "
            f"{run.pg_xacts.get('rollback', 0) / per:.1f} pg rollbacks (incl. pre-pings and"
            f" read-only blocks), {run.checkouts / per:.1f} pool checkouts,"
            f" {run.pg_xacts.get('sessions', 0):,} pg sessions opened in all,"
            f" {run.redis_commands / per:.1f} redis commands (whole server)",
        ),
        (
            "  redis commands pipelined (this process)",
            "n/a"
            if run.redis_pipelined is None
            else f"{run.redis_pipelined[0]:,} in {run.redis_pipelined[1]:,} pipelines"
            f" ({run.redis_pipelined[0] / per:.1f} per order; the rest went alone)",
        ),
        (
            "  SQL statements per order (this process)",
            ", ".join(f"{k} {v / per:.1f}" for k, v in run.statements.most_common(8)),
        ),
        (
            "pg non-idle sessions (avg)",
            f"{sum(run.pg_sessions.values()) / max(run.pg_samples, 1):.2f}"
            f" over {run.pg_samples} samples (state wait_event | query):",
        ),
    ]
    samples = max(run.pg_samples, 1)
    for session, count in run.pg_sessions.most_common(args.sessions_top):
        rows.append(("  pg non-idle sessions (avg)", f"{count / samples:5.2f}  {session}"))
    if base is not None:
        rows += [
            ("BASELINE insert+commit, 1 conn", f"{base.single:,.0f} commits/s (asyncpg)"),
            (
                f"BASELINE insert+commit, {base.connections} conns",
                f"{base.concurrent:,.0f} commits/s (concurrency → group commit)",
            ),
            ("postgres settings", ", ".join(f"{k}={v}" for k, v in base.settings.items())),
            (
                "order path / baseline",
                f"{placed_rate / base.single:.2f}x of 1 conn, "
                f"{placed_rate / base.concurrent:.2f}x of {base.connections} conns",
            ),
        ]
    if WARNINGS:
        rows.append(("log warnings", ", ".join(f"{k} x{v}" for k, v in WARNINGS.most_common())))
        rows += [(f"  first {name}", error) for name, error in FIRST_ERRORS.items()]
    checks = [
        (f"≥1,000 orders/s placed ({placed_rate:,.0f})", placed_rate >= 1000),
        (f"≥1,000 orders/s filled ({filled_rate:,.0f})", filled_rate >= 1000),
        (f"ack p99 ≤25 ms ({ack_p99:.1f})", ack_p99 <= 25),
        (f"risk p99 ≤5 ms ({risk_p99:.1f})", risk_p99 <= 5),
    ]
    rows += [(f"target {name}", "MET" if ok else "NOT MET") for name, ok in checks]
    print("$ python " + " ".join(sys.argv))
    print_rows(rows)
    if run.profile:
        print_top_functions(
            "API and workers", run.profile, args.profile_top, skip=("process ", "thread ")
        )


async def main(args: argparse.Namespace) -> None:
    token = uuid.uuid4().hex[:8]
    namespace = f"bench{token}"
    database = f"tl_bench_{token}"
    admin_url = args.postgres_url
    database_url = admin_url.rsplit("/", 1)[0] + f"/{database}"
    args.database_url = database_url
    await admin_execute(admin_url, f'CREATE DATABASE "{database}"')
    base: Baseline | None = None
    try:
        await upgrade_database(database_url)
        if args.baseline:
            base = await baseline(database_url, args.baseline_seconds, args.baseline_connections)
        settings = Settings(
            database_url=database_url,
            bus_url=args.nats_url,
            cache_url=args.redis_url,
            namespace=namespace,
            risk_order_rate=1_000_000,
            risk_max_open_orders=1_000_000,
            bus_partitions=args.partitions,
        )
        run = await order_path(args, settings)
    finally:
        await drop_bench_run(
            nats_url=args.nats_url,
            stream_prefix=namespace.upper(),
            redis_url=args.redis_url,
            key_prefix=namespace,
            admin_url=admin_url,
            database=database,
        )
    report(args, run, base)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1100,
        help="orders/s offered (10 %% above the 1,000/s target: pacing loses a few); 0 = max",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of offered load")
    parser.add_argument("--drain", type=float, default=30.0, help="max seconds to drain fills")
    parser.add_argument(
        "--placers",
        type=int,
        default=256,
        help="concurrent placing tasks: at least rate x acknowledgement latency, or the"
        " generator caps the load (it reports orders due but never started)",
    )
    parser.add_argument("--accounts", type=int, default=200, help="accounts, one user each")
    parser.add_argument("--cash", type=int, default=1_000_000_000, help="opening cash each")
    parser.add_argument("--symbols", type=int, default=5, help="symbols traded")
    parser.add_argument(
        "--quote-interval", type=float, default=0.05, help="seconds between quotes per symbol"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes; 0 = all in this process"
    )
    parser.add_argument(
        "--worker-services",
        default="market-data,execution",
        help="services the workers run (add read-side to load the read side too)",
    )
    parser.add_argument("--partitions", type=int, default=8, help="bus partitions per topic")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--baseline-connections", type=int, default=8)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--profile", metavar="DIR", help="py-spy this process into DIR")
    parser.add_argument("--profile-top", type=int, default=25, help="functions shown")
    parser.add_argument("--sessions-top", type=int, default=8, help="pg session kinds shown")
    parser.add_argument("--nats-url", type=local_url, default="nats://127.0.0.1:4222")
    parser.add_argument("--redis-url", type=local_url, default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--postgres-url", type=local_url, default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    if args.rate < 0 or args.duration <= 0 or args.placers < 1 or args.accounts < 1:
        parser.error("--rate ≥ 0, --duration > 0, --placers ≥ 1 and --accounts ≥ 1 please")
    if args.workers < 0:
        parser.error("--workers ≥ 0 please")
    return args


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    structlog.configure(
        processors=[count_warnings],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    arguments = parse_args()
    # uvloop, as ``tradeloom serve`` runs (uvicorn picks it when installed).
    uvloop.run(worker() if arguments.worker else main(arguments))

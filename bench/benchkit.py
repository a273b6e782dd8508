"""Helpers shared by the benchmark scripts in this folder.

The scripts run as ``python bench/<script>.py``, so this folder is on ``sys.path`` and they
import these as ``from benchkit import ...`` (spawned child processes inherit that path).

* logging: :data:`WARNINGS` and :func:`count_warnings`, a structlog processor that counts
  warnings instead of printing them over the report;
* CPU and memory from /proc: :func:`process_cpu`, :func:`peak_rss_mb`, :func:`rss_mb`,
  :func:`server_cpu`, :func:`server_cpu_delta`, :func:`machine_cpu` (and :data:`CLOCK_TICKS`,
  :data:`CORES`, :data:`SERVER_NAMES`);
* the event loop: :func:`loop_lag`;
* raw nats-py JetStream, the baselines: :func:`publish_raw`, :func:`fetch_and_ack`;
* the database baseline: :class:`Baseline`, :func:`baseline` (bare insert-commit rates);
* setup and report: :func:`admin_execute`, :func:`local_url`, :func:`free_port`,
  :func:`percentile`, :func:`top_functions`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import time
from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
import structlog

from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.messaging.partitioning import partition_of

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
"""Jiffies per second: the unit of the CPU times in /proc/<pid>/stat."""

CORES = os.cpu_count() or 1
"""CPU cores of this machine."""

SERVER_NAMES: tuple[str, ...] = ("postgres", "nats-server", "redis-server")
"""The servers whose CPU :func:`server_cpu` reads by default, in this order."""

WARNINGS: Counter[str] = Counter()
"""Warnings and errors logged in this process, ``"<level> <event>"`` → count."""


# --- logging --------------------------------------------------------------------------------


FIRST_ERRORS: dict[str, str] = {}  # the first error text of each logged error event


def count_warnings(_logger: Any, level: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Count warnings and errors by event name instead of printing them over the table.

    A structlog processor: adds one to :data:`WARNINGS` and drops the event.
    """
    WARNINGS[f"{level} {event.get('event')}"] += 1
    if level in ("error", "critical") and "error" in event:
        FIRST_ERRORS.setdefault(str(event.get("event")), str(event["error"])[:300])
    raise structlog.DropEvent


# --- CPU and memory, from /proc -------------------------------------------------------------


def _stat_cpu(stat: str) -> float:
    """User + system CPU seconds from the text of a /proc/<pid>/stat file."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) so far of process ``pid``, all its threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return _stat_cpu(handle.read())


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of process ``pid`` in MB; NaN if /proc does not say."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    """Resident set size now (VmRSS) of process ``pid`` in MB; NaN if /proc does not say."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds so far of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


def server_cpu(names: Sequence[str] = SERVER_NAMES) -> dict[str, dict[int, float]]:
    """CPU seconds so far of every process called one of ``names``, by name then pid.

    The result has a key for every name, in the order of ``names``, even if no such process
    runs; :func:`server_cpu_delta` keeps that order.
    """
    found: dict[str, dict[int, float]] = {name: {} for name in names}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                stat = handle.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name in found:
            found[name][int(entry)] = _stat_cpu(stat)
    return found


def server_cpu_delta(
    before: Mapping[str, Mapping[int, float]], after: Mapping[str, Mapping[int, float]]
) -> dict[str, float]:
    """CPU seconds each server name used between two :func:`server_cpu` readings.

    Processes that started in between count from zero; names are in the order of ``after``.
    """
    return {
        name: sum(cpu - before[name].get(pid, 0.0) for pid, cpu in pids.items())
        for name, pids in after.items()
    }


# --- the event loop -------------------------------------------------------------------------


async def loop_lag(samples: list[float], period: float = 0.01) -> None:
    """Record how late a ``period`` sleep wakes up: the event loop's stalls (blocking work,
    starvation by other runnable tasks, or the process not being scheduled).

    Appends one sample (seconds) to ``samples`` per sleep, until cancelled.
    """
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        samples.append(max(0.0, loop.time() - due))


# --- raw nats-py JetStream, for the baselines -----------------------------------------------


async def publish_raw(
    js: Any, subject: str, payloads: Sequence[tuple[str, bytes, str]], partitions: int
) -> None:
    """``publish_async`` every ``(event_id, data, key)`` to ``<subject>.<partition of key>``
    with the headers the bus adapter sets, then wait for every ack.

    ``js`` is a nats-py ``JetStreamContext``; how many acks are in flight at once is its
    ``publish_async_max_pending``.
    """
    acks = [
        await js.publish_async(
            f"{subject}.{partition_of(key, partitions)}",
            data,
            headers={"Nats-Msg-Id": event_id, "Tl-Key": key},
        )
        for event_id, data, key in payloads
    ]
    await asyncio.gather(*acks)


async def fetch_and_ack(pull: Any, batch: int, consumed: list[int], total: int) -> None:
    """Fetch up to ``batch`` messages at a time from the pull subscription ``pull`` and ack
    each, adding to ``consumed[0]``, until ``consumed[0]`` reaches ``total``.

    ``consumed`` is shared by the concurrent drains of all partitions: each stops once all of
    them together have consumed ``total``.
    """
    while consumed[0] < total:
        try:
            messages = await pull.fetch(batch, timeout=0.2)
        except TimeoutError:
            continue
        for message in messages:
            await message.ack()
        consumed[0] += len(messages)


# --- the database baseline: bare insert-commit -----------------------------------------------


@dataclass
class Baseline:
    """Bare ``BEGIN; INSERT; COMMIT`` rates (per second) and the server settings that shape them."""

    single: float = 0.0
    concurrent: float = 0.0
    connections: int = 8
    settings: dict[str, str] = field(default_factory=dict)


async def baseline(url: str, seconds: float, connections: int) -> Baseline:
    """``BEGIN; INSERT; COMMIT`` in a loop: on one connection, then on ``connections``."""
    result = Baseline(connections=connections)
    admin = await asyncpg.connect(url)
    try:
        for name in (
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "commit_delay",
            "commit_siblings",
            "shared_buffers",
            "max_connections",
        ):
            result.settings[name] = await admin.fetchval(f"SHOW {name}")
        await admin.execute(
            "CREATE TABLE bench_commit (id bigserial PRIMARY KEY, payload text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
    finally:
        await admin.close()

    async def loop(conn: Any, deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_commit (payload) VALUES ($1)", "x" * 200)
            done += 1
        return done

    for count in (1, connections):
        conns = [await asyncpg.connect(url) for _ in range(count)]
        try:
            started = time.perf_counter()
            done = await asyncio.gather(*(loop(c, started + seconds) for c in conns))
            rate = sum(done) / (time.perf_counter() - started)
        finally:
            for conn in conns:
                await conn.close()
        if count == 1:
            result.single = rate
        else:
            result.concurrent = rate
    admin = await asyncpg.connect(url)
    try:
        await admin.execute("DROP TABLE bench_commit")
    finally:
        await admin.close()
    return result


# --- setup, teardown, report ----------------------------------------------------------------


async def admin_execute(url: str, sql: str) -> None:
    """Run one statement (``CREATE DATABASE``, ``DROP DATABASE``...) on its own connection."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def local_url(url: str) -> str:
    """An argparse ``type``: ``url`` unchanged if its host is 127.0.0.1, else an error."""
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].rsplit(":", 1)[0]
    if host != "127.0.0.1":
        raise argparse.ArgumentTypeError(f"only 127.0.0.1 is allowed, not {host!r}")
    return url


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the OS's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(samples: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1..99) of ``samples``; the one sample if there is one, NaN if
    there are none."""
    if not samples:
        return float("nan")
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


def top_functions(
    path: str, skip: tuple[str, ...] = ("process ",), idle: tuple[str, ...] = ()
) -> tuple[Counter[str], Counter[str], int]:
    """Own-time and inclusive samples per function of a py-spy raw (collapsed stacks) file.

    Frames starting with one of ``skip`` (py-spy's process and thread pseudo-frames) are left
    out, and so are whole stacks whose innermost frame starts with one of ``idle`` (threads
    parked in a wait that py-spy did not recognise as idle). Returns ``(own, inclusive, total
    samples)``, the total at least 1; a file that cannot be read counts as empty.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [frame for frame in stack.split(";") if not frame.startswith(skip)]
            if idle and frames and frames[-1].startswith(idle):
                continue
            samples = int(count)
            total += samples
            if frames:
                own[frames[-1]] += samples
            for frame in set(frames):
                inclusive[frame] += samples
    return own, inclusive, max(total, 1)


def print_rows(rows: Sequence[tuple[str, object]], indent: str = "  ") -> None:
    """A report's ``(name, value)`` rows as two aligned columns."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{indent}{name:<{width}}  {value}")


def print_top_functions(
    title: str,
    path: str,
    top: int,
    skip: tuple[str, ...] = ("process ",),
    idle: tuple[str, ...] = (),
) -> None:
    """The ``top`` functions of a py-spy raw file by own time, with their inclusive time."""
    print(f"  py-spy {title} ({path}), top functions by own time / inclusive time:")
    own, inclusive, total = top_functions(path, skip=skip, idle=idle)
    for function, samples in own.most_common(top):
        print(f"    {samples / total:6.1%} own {inclusive[function] / total:6.1%} incl  {function}")


async def drop_bench_run(
    *,
    nats_url: str,
    stream_prefix: str,
    redis_url: str,
    key_prefix: str,
    admin_url: str,
    database: str,
) -> None:
    """Remove what a run made: its NATS streams, its Redis keys, its throwaway database."""
    await delete_bus_streams(nats_url, stream_prefix)
    cache = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in cache.scan_iter(match=f"{key_prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await cache.delete(*keys[start : start + 1000])
    finally:
        await cache.aclose()
    await admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

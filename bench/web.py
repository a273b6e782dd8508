"""Web-tier benchmark: order entry over HTTP and live SSE streams, through ``tradeloom serve``.

Runs the web tier as production runs it: ``tradeloom serve --services none`` (uvicorn serving
``create_app(build_platform(settings), settle_heap_after_start=True)``: the API and the SSE
hub, no consumer) with ``--workers`` more ``tradeloom serve`` processes running every
consuming service (``--workers 0``: the whole platform in the one web process), on the
PRODUCTION adapters (PostgreSQL, Redis, NATS JetStream on 127.0.0.1),
driven over real TCP connections by load generators on THIS SAME MACHINE (2 cores shared by
the server, PostgreSQL, Redis, NATS, the clients and whatever else runs: the "others" CPU
column is the machine's busy time no listed process accounts for, i.e. other programs and
kernel work charged to none, such as loopback networking; the figures are a floor, not what
a dedicated host does).

    python bench/web.py                               # both phases, the default run (~3 min)
    python bench/web.py --clients 64                  # (a) closed loop, 64 connections
    python bench/web.py --rate 800                    # (a) open loop, 800 orders/s offered
    python bench/web.py --streams 200 --hold 5 --duration 5    # a quick look
    python bench/web.py --skip-orders --profile /tmp/prof      # (b) only, py-spy the server

What runs where:

* **this process** (the driver): creates the throwaway database, registers the users
  (``UserService``; argon2 at time 1, 8 KiB, 1 lane, the server's setting too, so logging
  in 1,000 users takes a second), logs them in over HTTP, publishes quotes on the bus (a
  ``PricePublisher`` on a ``NatsBus``: every symbol of the universe, each quote stamped
  ``datetime.now(UTC)`` as it is submitted, which is its ``time``; every 1 s during (a),
  enough to keep prices fresh for risk, every ``--quote-interval`` s during (b)), places the
  stream phase's orders and probes the server; it reads every process's CPU and memory
  from /proc;
* **the server**: ``tradeloom --log-level WARNING serve --services none`` in its own process,
  a fresh one per phase (with its fresh workers: the "workers" CPU column), configured by
  ``TRADELOOM_*`` variables: per-user rate limits and risk limits raised to 1,000,000 (the
  run measures the platform, not the limiter), the cheap argon2,
  ``TRADELOOM_STREAM_QUOTES_PER_SECOND=1``; its warnings are counted from its JSON log;
* **the baseline server**: a bare FastAPI app served by ``uvicorn.run`` with the options
  ``serve`` uses: ``POST /bare`` answering ``{"status":"ok"}``, and ``GET /bare/stream``, an
  SSE ``StreamingResponse`` writing five stamped quotes a second (no hub, no platform);
* **load generators** (``--load-procs`` processes, uvloop): ``--clients`` keep-alive HTTP/1.1
  connections over raw asyncio streams (a request is pre-encoded bytes, a response is read
  by its ``content-length``: ~20 µs of client CPU each);
* **stream clients** (``--stream-procs`` processes, uvloop): each SSE stream is an
  ``asyncio.Protocol`` (no task per stream) parsing the chunked body into SSE frames.

**(a) Order entry.** ``POST /api/orders`` with ``Authorization: Bearer`` API tokens
(``--auth cookie``: the session cookie and ``X-CSRF-Token``) of ``--order-users`` users: GTC
limit BUYs of 1 share at half the reference price (they rest on the paper broker; risk
reserves their notional, so the users get ample cash), over ``--order-symbols`` symbols.
Closed loop (each of ``--clients`` connections sends its next order when the last one is
answered) by default; ``--rate R``: open loop, order ``i`` due at ``start + i/R``, sent by
the first free connection (its lateness when none was free is reported apart). After
``--warmup`` s, ``--duration`` s are measured: orders/s = 202 answers in the window / window;
latency = from writing the request to having read the whole answer, p50/p99/max. In the
same run, with the same load generator and connections:

* BASELINE: ``POST /bare`` with the same body, closed loop: ratio = orders/s / bare req/s;
* ``reads`` (``--read-duration`` s): ``GET /api/market/quotes`` of one symbol with the same
  credentials, what every authenticated request pays (token lookup, rate limit, one Redis
  read) without the order path, on the same server before the orders.

Also per run: CPU seconds per wall second of every process, PostgreSQL transactions
committed per answer and the connections the server's pool opened in the window (a pool
that opens connections under load is churning), and the orders by status right after the
window (``pending_new``: not yet through execution, which runs in the same process).

**(b) Streams.** ``GET /api/stream?symbols=...`` (``--stream-symbols`` symbols each, spread
over the universe) with the session cookie of ``--stream-users`` users (logged in over HTTP),
stream ``k`` belonging to user ``k mod users``. Levels are cumulative (``--streams
2000,5000,15000``): streams are added until the level is reached, the server settles
``--settle`` s, then ``--hold`` s are measured while the driver places ``--stream-order-rate``
orders/s for random users that have streams open (each order's ``order.submitted`` and
``order.accepted`` go to every stream of its owner). First, the BASELINE: the largest level
of ``/bare/stream`` streams on the bare app, held ``--bare-hold`` s. Per level:

* RSS per connection: (the server's VmRSS with N streams open - its VmRSS after the logins,
  before any stream) / N;
* quote latency: from the quote's ``time`` to the client's receipt of the chunk. By design
  it includes conflation: the hub offers the newest quote on a 4 Hz tick, a stream sends a
  symbol at most once a second (latest wins), so with a quote every 0.25 s up to ~0.5 s of
  it is waiting, not load (the bare baseline stamps at write time: no such wait);
* order-event latency: from the event's ``occurred_at`` to receipt;
* ``/healthz`` (bare: ``/docs``) round trips every 100 ms during the hold: how long a
  trivial request waits behind the streams (the event loop's responsiveness);
* CPU seconds per wall second of every process over the hold.

Latencies are read against the host's one wall clock (publisher, server and clients are
processes of this machine: no skew). ``--profile DIR``: py-spy (100 Hz, raw) on the server
during each measured window of (a), while the last level opens, and during its hold; the
top functions by own time are printed.

Everything is throwaway: a database ``tl_bench_<random>`` (created, migrated, dropped), a NATS
stream prefix and Redis namespace ``bench<random>`` (streams deleted, keys removed). Only
127.0.0.1 is contacted. File descriptors: the server and each client process need one per
connection (``ulimit -n`` is checked against the plan).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from multiprocessing.connection import Connection, wait
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog

from benchkit import (
    CORES,
    WARNINGS,
    admin_execute,
    count_warnings,
    drop_bench_run,
    free_port,
    local_url,
    machine_cpu,
    peak_rss_mb,
    percentile,
    print_rows,
    print_top_functions,
    process_cpu,
    rss_mb,
    server_cpu,
    server_cpu_delta,
)
from tradeloom.accounts.repository import AccountRepository
from tradeloom.bootstrap import build_bus, build_passwords
from tradeloom.config import Settings
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.market import Instrument
from tradeloom.domain.time import SystemClock
from tradeloom.market_data.publisher import PricePublisher
from tradeloom.market_data.universe import default_universe
from tradeloom.observability.metrics import Metrics
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import UserService

HOST = "127.0.0.1"
PASSWORD = "bench-password-0123"
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
RAISED_LIMIT = 1_000_000
HIST_MS = 60_000  # latency histograms: 1 ms buckets up to a minute, then one overflow bucket
T0 = time.perf_counter()
IDLE = ("Condition.wait (threading.py", "Queue.get (queue.py")  # parked worker threads


def say(text: str) -> None:
    """A progress line, with the seconds since start."""
    print(f"[{time.perf_counter() - T0:6.1f} s] {text}", flush=True)


def _quiet_logs() -> None:
    logging.disable(logging.WARNING)
    structlog.configure(
        processors=[count_warnings],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


# --- HTTP/1.1 on raw asyncio streams: what the load generators and the driver speak ---------


def http_request(
    method: str, path: str, *, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """One pre-encoded HTTP/1.1 request (keep-alive is HTTP/1.1's default)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers)]
    if method in ("POST", "PUT", "PATCH"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """``(status, head, body)`` of one response with a ``content-length`` (uvicorn sends one
    for every response that is not streamed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lowered = head.lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("a response without content-length")
    length = int(head[at + 17 : lowered.index(b"\r\n", at + 17)])
    body = await reader.readexactly(length) if length else b""
    return int(head[9:12]), head, body


class Http:
    """One keep-alive connection, one request at a time; reconnects after an error."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, raw: bytes) -> tuple[int, bytes, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(HOST, self._port)
        reader, writer = self._streams
        try:
            writer.write(raw)
            return await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.close()
            raise

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def error_code(body: bytes) -> str:
    """The ``error.code`` of an error answer, or a note of what the body was."""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"unparsed ({body[:40]!r})"


def set_cookies(head: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"set-cookie:"):
            name, _, value = line[11:].strip().split(b";", 1)[0].partition(b"=")
            found[name.decode()] = value.decode()
    return found


# --- latency histograms (mergeable across processes) ----------------------------------------


def new_histogram() -> list[int]:
    return [0] * (HIST_MS + 1)


def observe(histogram: list[int], seconds: float) -> None:
    histogram[min(max(int(seconds * 1000), 0), HIST_MS)] += 1


def merged(histograms: Sequence[Sequence[int]]) -> list[int]:
    return [sum(column) for column in zip(*histograms, strict=True)] or new_histogram()


def histogram_ms(histogram: Sequence[int], q: float) -> float:
    """The ``q``-th percentile in ms (the upper edge of its 1 ms bucket); NaN when empty."""
    total = sum(histogram)
    if not total:
        return float("nan")
    rank, seen = q / 100 * total, 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return float(bucket + 1)
    return float(HIST_MS)


def histogram_max(histogram: Sequence[int]) -> float:
    last = max((i for i, count in enumerate(histogram) if count), default=None)
    return float("nan") if last is None else float(last + 1)


# --- the servers ----------------------------------------------------------------------------


@dataclass
class Server:
    """A web server this run started: ``tradeloom serve`` or the bare baseline."""

    name: str
    port: int
    process: Any  # subprocess.Popen or multiprocessing.Process
    log_path: str | None = None
    workers: list[Server] = field(default_factory=list)  # run the consuming services

    @property
    def pid(self) -> int:
        return int(self.process.pid)


def server_environment(args: argparse.Namespace) -> dict[str, str]:
    """The ``TRADELOOM_*`` settings of the server processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADELOOM_")}
    env.update(
        {
            "TRADELOOM_DATABASE_URL": args.database_url,
            "TRADELOOM_BUS_URL": args.nats_url,
            "TRADELOOM_CACHE_URL": args.redis_url,
            "TRADELOOM_NAMESPACE": args.namespace,
            "TRADELOOM_RATE_LIMIT_ORDERS": str(RAISED_LIMIT),
            "TRADELOOM_RATE_LIMIT_READS": str(RAISED_LIMIT),
            "TRADELOOM_RISK_ORDER_RATE": str(RAISED_LIMIT),
            "TRADELOOM_RISK_MAX_OPEN_ORDERS": str(RAISED_LIMIT),
            "TRADELOOM_STREAM_QUOTES_PER_SECOND": "1",
            **{f"TRADELOOM_PASSWORD_{k.upper()}": str(v) for k, v in CHEAP_ARGON2.items()},
        }
    )
    return env


async def start_platform(args: argparse.Namespace, name: str) -> Server:
    """The web server the clients talk to. With ``--workers N`` it runs no consuming
    service (``serve --services none``: the API and the SSE hub only) and N more
    ``tradeloom serve`` processes run every consuming service (market data, execution, the
    read side; their HTTP ports go unused); with ``--workers 0`` one process runs it all."""
    workers = [
        start_tradeloom(args, f"{name}-worker{n}", "all") for n in range(1, args.workers + 1)
    ]
    for worker in workers:
        await wait_ready(worker, "/readyz")
    server = start_tradeloom(args, name, "none" if workers else "all")
    server.workers = workers
    return server


def start_tradeloom(args: argparse.Namespace, name: str, services: str) -> Server:
    """``tradeloom --log-level WARNING serve`` on a free port; its log (JSON lines) to a file."""
    port = free_port()
    command = [sys.executable, "-m", "tradeloom.cli", "--log-level", "WARNING", "serve"]
    command += ["--host", HOST, "--port", str(port), "--services", services]
    with tempfile.NamedTemporaryFile(
        prefix=f"tl-bench-{name}-", suffix=".log", delete=False
    ) as log:
        process = subprocess.Popen(
            command, env=server_environment(args), stdout=log, stderr=subprocess.STDOUT
        )
    return Server(name, port, process, log.name)


def _serve_bare(port: int) -> None:
    """The baselines: a bare FastAPI app served with the options ``tradeloom serve`` uses.

    ``POST /bare`` answers a small JSON; ``GET /bare/stream`` is the bare SSE stream: a
    ``snapshot`` frame, then every second one chunk of five ``quote`` frames stamped with
    the time they are written (its own sleep per stream: no hub, no conflation)."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.post("/bare")
    async def bare() -> dict[str, str]:
        return {"status": "ok"}

    async def frames() -> Any:
        yield b"event: snapshot\ndata: {}\n\n"
        while True:
            await asyncio.sleep(1.0)
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z").encode()
            yield b"".join(
                b'event: quote\ndata: {"symbol":"S%d","time":"%s"}\n\n' % (j, now) for j in range(5)
            )

    @app.get("/bare/stream")
    async def bare_stream() -> StreamingResponse:
        return StreamingResponse(frames(), media_type="text/event-stream")

    uvicorn.run(
        app,
        host=HOST,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )


def start_bare() -> Server:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_bare, args=(port,), daemon=True, name="bare"
    )
    process.start()
    return Server("bare", port, process)


async def wait_ready(server: Server, path: str, within: float = 90.0) -> float:
    """Seconds until ``GET path`` answers 200 (uvicorn listens once the app has started)."""
    started = time.perf_counter()
    while True:
        http = Http(server.port)
        try:
            status, _, _ = await http.send(http_request("GET", path))
            if status == 200:
                return time.perf_counter() - started
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            http.close()
        alive = (
            server.process.poll() is None
            if isinstance(server.process, subprocess.Popen)
            else (server.process.is_alive())
        )
        if not alive or time.perf_counter() - started > within:
            raise RuntimeError(f"the {server.name} server did not start (log: {server.log_path})")
        await asyncio.sleep(0.1)


async def stop_server(server: Server) -> None:
    """SIGTERM (uvicorn's graceful shutdown, the platform closes), SIGKILL after 20 s; then
    its workers the same way."""
    await _stop_process(server)
    for worker in server.workers:
        await _stop_process(worker)


async def _stop_process(server: Server) -> None:
    loop = asyncio.get_running_loop()
    process = server.process
    if isinstance(process, subprocess.Popen):
        process.send_signal(signal.SIGTERM)
        try:
            await loop.run_in_executor(None, process.wait, 20)
        except subprocess.TimeoutExpired:
            process.kill()
            await loop.run_in_executor(None, process.wait)
            WARNINGS[f"{server.name}: killed after 20 s of graceful shutdown"] += 1
    else:
        process.terminate()
        await loop.run_in_executor(None, process.join, 20)
        if process.is_alive():
            process.kill()
            await loop.run_in_executor(None, process.join)


def count_server_warnings(server: Server) -> None:
    """Add the server's (and its workers') logged warnings and errors (JSON lines) to
    :data:`WARNINGS`."""
    for worker in server.workers:
        count_server_warnings(worker)
    if server.log_path is None:
        return
    with open(server.log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
                WARNINGS[f"{server.name}: {entry.get('level')} {entry.get('event')}"] += 1
            except ValueError:
                if line.strip():
                    WARNINGS[f"{server.name}: non-JSON output lines"] += 1
    os.unlink(server.log_path)


def start_profiler(directory: str | None, name: str, pid: int) -> Any:
    """py-spy (raw collapsed stacks, 100 Hz) on ``pid`` until :func:`finish_profiler`; None
    without ``--profile``."""
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.txt")
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking"]
    command += ["--format", "raw", "--output", path]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return name, path, process


async def finish_profiler(profiler: Any, profiles: dict[str, str]) -> None:
    """Stop py-spy (SIGINT: it writes its file) and note the file under its name."""
    if profiler is not None:
        name, path, process = profiler
        process.send_signal(signal.SIGINT)
        await asyncio.get_running_loop().run_in_executor(None, process.wait)
        profiles[name] = path


# --- setup: users, logins, tokens, quotes ---------------------------------------------------


async def register_users(settings: Settings, names: Sequence[str], cash: int) -> None:
    """Each user with their default account, through ``UserService`` (cheap argon2)."""
    database = Database(settings.database_url)
    users = UserService(
        UserRepository(database), build_passwords(settings), AccountRepository(database)
    )
    gate = asyncio.Semaphore(16)

    async def register(name: str) -> None:
        async with gate:
            await users.register(name, PASSWORD, opening_cash=cash)

    try:
        await asyncio.gather(*(register(name) for name in names))
    finally:
        await database.dispose()


@dataclass(frozen=True)
class Login:
    username: str
    cookie: str  # the Cookie header: tl_session and tl_csrf
    csrf: str


async def log_in(port: int, names: Sequence[str], connections: int = 8) -> list[Login]:
    """``POST /api/auth/login`` for every user, over a few keep-alive connections."""
    logins: dict[str, Login] = {}
    queue = list(reversed(names))

    async def worker() -> None:
        http = Http(port)
        try:
            while queue:
                name = queue.pop()
                body = json.dumps({"username": name, "password": PASSWORD}).encode()
                status, head, answer = await http.send(
                    http_request("POST", "/api/auth/login", body=body)
                )
                if status != 200:
                    raise RuntimeError(f"login of {name}: {status} {error_code(answer)}")
                cookies = set_cookies(head)
                cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
                logins[name] = Login(name, cookie, json.loads(answer)["csrf_token"])
        finally:
            http.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return [logins[name] for name in names]


async def issue_tokens(port: int, logins: Sequence[Login]) -> list[str]:
    """An API token per user: ``POST /api/auth/tokens`` from the logged-in session."""
    http = Http(port)
    tokens = []
    try:
        for login in logins:
            headers = [("Cookie", login.cookie), ("X-CSRF-Token", login.csrf)]
            raw = http_request(
                "POST", "/api/auth/tokens", body=b'{"name":"bench"}', headers=headers
            )
            status, _, answer = await http.send(raw)
            if status != 201:
                raise RuntimeError(f"token for {login.username}: {status} {error_code(answer)}")
            tokens.append(json.loads(answer)["token"])
    finally:
        http.close()
    return tokens


def far_limit_price(instrument: Instrument) -> Decimal:
    """Half the reference price, on the tick grid: a BUY that rests and never fills."""
    ticks = (instrument.reference_price / 2 / instrument.tick_size).to_integral_value(ROUND_FLOOR)
    return ticks * instrument.tick_size


def order_body(instrument: Instrument) -> bytes:
    return json.dumps(
        {
            "symbol": instrument.symbol,
            "side": "buy",
            "type": "limit",
            "qty": "1",
            "limit_price": str(far_limit_price(instrument)),
            "time_in_force": "gtc",
        }
    ).encode()


def auth_headers(login: Login, token: str | None) -> list[tuple[str, str]]:
    if token is not None:
        return [("Authorization", f"Bearer {token}")]
    return [("Cookie", login.cookie), ("X-CSRF-Token", login.csrf)]


class QuotePump:
    """Every symbol of the universe, every ``interval`` s, published on the bus as the
    market-data feeds publish (a ``PricePublisher``), each stamped when it is submitted."""

    def __init__(self, settings: Settings, interval: float) -> None:
        self._bus = build_bus(settings)
        self._publisher = PricePublisher(self._bus, Metrics(), SystemClock())
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    async def start(self) -> None:
        await self._bus.start()
        await self._publisher.start()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        universe = default_universe()
        while True:
            for instrument in universe:
                mid, tick = instrument.reference_price, instrument.tick_size
                await self._publisher.submit(
                    PriceUpdate(
                        symbol=instrument.symbol,
                        bid=mid - tick * (1 + self.sent % 2),  # nudged: every quote is news
                        ask=mid + tick,
                        last=None,
                        volume=Decimal(0),
                        exchange_time=datetime.now(UTC),
                        venue="BENCH",
                    )
                )
                self.sent += 1
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._publisher.stop(within=5)
        await self._bus.close()


async def wait_for_quotes(
    port: int, headers: Sequence[tuple[str, str]], symbols: Sequence[str]
) -> None:
    """Until the server's last-price cache has every symbol (risk needs a price)."""
    http = Http(port)
    raw = http_request("GET", "/api/market/quotes?symbols=" + ",".join(symbols), headers=headers)
    try:
        async with asyncio.timeout(30):
            while True:
                status, _, body = await http.send(raw)
                if status == 200 and all(
                    q is not None for q in json.loads(body)["quotes"].values()
                ):
                    return
                await asyncio.sleep(0.1)
    finally:
        http.close()


# --- child processes ------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: Any
    pipe: Connection

    async def receive(self) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, self.pipe.recv)

    async def ask(self, message: Any) -> Any:
        self.pipe.send(message)
        return await self.receive()


def start_child(name: str, target: Callable[..., None], *args: Any) -> Child:
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    process = spawn.Process(target=target, args=(theirs, *args), daemon=True, name=name)
    process.start()
    theirs.close()  # a dead child is then an EOFError here, not a hang
    return Child(name, process, ours)


async def join_children(children: Sequence[Child]) -> None:
    loop = asyncio.get_running_loop()
    for child in children:
        await loop.run_in_executor(None, child.process.join, 10)
        if child.process.is_alive():
            child.process.terminate()
            await loop.run_in_executor(None, child.process.join, 5)


def _with_uvloop(coroutine: Any) -> None:
    _quiet_logs()
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


# --- (a) order entry: the load generator, in child processes --------------------------------


async def _load(
    pipe: Connection,
    port: int,
    requests: list[list[bytes]],
    rate: float,
    warmup: float,
    duration: float,
) -> None:
    """Each of ``requests`` is one client (connection) and the requests it cycles through.

    ``rate`` 0: closed loop; else open loop at ``rate`` requests/s over all clients.
    Measures requests begun in ``[warmup, warmup + duration)`` after "go"."""
    loop = asyncio.get_running_loop()
    connections = [await asyncio.open_connection(HOST, port) for _ in requests]
    pipe.send("ready")
    await loop.run_in_executor(None, pipe.recv)  # "go"
    started = time.perf_counter()
    measure_from, stop_at = started + warmup, started + warmup + duration
    latencies, late = array("d"), array("d")
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    counts = {"ok_in_window": 0, "offered": 0}
    next_index = 0

    async def client(number: int) -> None:
        nonlocal next_index
        reader, writer = connections[number]
        mine, sent = requests[number], 0
        while True:
            if rate:
                index, next_index = next_index, next_index + 1
                due = started + index / rate
                if due >= stop_at:
                    return
                if (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                begun = time.perf_counter()
                measured = due >= measure_from
                if measured:
                    counts["offered"] += 1
                    late.append(max(0.0, begun - due))
            else:
                begun = time.perf_counter()
                if begun >= stop_at:
                    return
                measured = begun >= measure_from
            writer.write(mine[sent % len(mine)])
            sent += 1
            try:
                status, _, body = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            done = time.perf_counter()
            if measured:
                latencies.append(done - begun)
                statuses[status] += 1
                if status >= 300:
                    codes[error_code(body)] += 1
            if status < 300 and measure_from <= done <= stop_at:
                counts["ok_in_window"] += 1

    await asyncio.gather(*(client(number) for number in range(len(requests))))
    for _, writer in connections:
        writer.close()
    due_in_window = round(rate * duration) if rate else 0
    pipe.send(
        {
            "latencies": latencies.tobytes(),
            "late": late.tobytes(),
            "statuses": statuses,
            "codes": codes,
            "errors": errors,
            "ok_in_window": counts["ok_in_window"],
            "offered": counts["offered"],
            "not_started": max(0, due_in_window - counts["offered"]),
            "warnings": dict(WARNINGS),
        }
    )


def _load_main(pipe: Connection, *args: Any) -> None:
    _with_uvloop(_load(pipe, *args))


@dataclass
class LoadRun:
    """One load-generator run against one server."""

    label: str
    clients: int
    rate: float
    window: float
    ok_in_window: int = 0
    offered: int = 0
    not_started: int = 0
    latencies: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # process → CPU s/s in the window
    rss_mb: float = 0.0
    machine_busy: float = 0.0
    pg: dict[str, int] = field(default_factory=dict)
    order_statuses: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.ok_in_window / self.window


def _doubles(raw: bytes) -> list[float]:
    values = array("d")
    values.frombytes(raw)
    return values.tolist()


async def drive_load(
    args: argparse.Namespace,
    server: Server,
    label: str,
    requests: list[list[bytes]],
    rate: float,
    duration: float,
    profiles: dict[str, str],
) -> LoadRun:
    """Run the load generators against ``server``; CPU is read over the measured window."""
    procs = max(1, min(args.load_procs, len(requests)))
    children = [
        start_child(
            f"load{p}",
            _load_main,
            server.port,
            requests[p::procs],
            rate / procs,
            args.warmup,
            duration,
        )
        for p in range(procs)
    ]
    run = LoadRun(label, len(requests), rate, duration)
    try:
        for child in children:
            if await child.receive() != "ready":
                raise RuntimeError(f"{child.name} did not start")
        say(
            f"{label}: {len(requests)} connections from {procs} load process(es); "
            f"{args.warmup:g} s warm-up, then {duration:g} s measured"
        )
        for child in children:
            child.pipe.send("go")
        await asyncio.sleep(args.warmup)
        database_url = args.database_url if server.log_path else None  # not for bare
        probe = Probe(server, children, "load generators", database_url)
        await probe.start()
        profiler = start_profiler(args.profile, label, server.pid)
        await asyncio.sleep(duration)
        await finish_profiler(profiler, profiles)
        await probe.stop()
        if label == "orders":
            run.order_statuses = await order_statuses(args.database_url)
        results = [await child.receive() for child in children]
    finally:
        await join_children(children)
    run.cpu, run.machine_busy, run.pg = probe.cpu, probe.machine_busy, probe.pg
    run.rss_mb = peak_rss_mb(server.pid)
    for result in results:
        run.ok_in_window += result["ok_in_window"]
        run.offered += result["offered"]
        run.not_started += result["not_started"]
        run.latencies += _doubles(result["latencies"])
        run.late += _doubles(result["late"])
        run.statuses.update(result["statuses"])
        run.codes.update(result["codes"])
        run.errors.update(result["errors"])
        WARNINGS.update({f"{label} load: {k}": v for k, v in result["warnings"].items()})
    say(f"{label}: {run.per_second:,.0f}/s, p99 {_p(run.latencies, 99):.1f} ms")
    return run


class Probe:
    """CPU seconds per wall second of the server, the children, PostgreSQL, NATS, Redis and
    the whole machine between :meth:`start` and :meth:`stop`; with a database URL, also the
    PostgreSQL sessions opened and transactions committed in the bench database."""

    def __init__(
        self,
        server: Server,
        children: Sequence[Child],
        children_name: str,
        database_url: str | None = None,
    ) -> None:
        self._database_url = database_url
        self._pids = {"server": server.pid} | {c.name: c.process.pid for c in children}
        self._workers = {w.name: w.pid for w in server.workers}
        self._group = children_name
        self.cpu: dict[str, float] = {}
        self.machine_busy = 0.0
        self.pg: dict[str, int] = {}

    async def _pg(self) -> dict[str, int]:
        if self._database_url is None:
            return {}
        conn = await asyncpg.connect(self._database_url)
        try:
            row = await conn.fetchrow(
                "SELECT sessions, xact_commit FROM pg_stat_database"
                " WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        return {"sessions opened": int(row["sessions"]), "commits": int(row["xact_commit"])}

    async def start(self) -> None:
        self._pg0 = await self._pg()
        self._cpu0 = {name: process_cpu(pid) for name, pid in self._pids.items()}
        self._workers0 = {name: process_cpu(pid) for name, pid in self._workers.items()}
        self._servers0, self._machine0 = server_cpu(), machine_cpu()
        self._started = time.perf_counter()

    async def stop(self) -> None:
        wall = time.perf_counter() - self._started
        cpu = {name: process_cpu(pid) - self._cpu0[name] for name, pid in self._pids.items()}
        servers, machine = server_cpu_delta(self._servers0, server_cpu()), machine_cpu()
        pg = await self._pg()
        self.pg = {
            k: v - self._pg0[k] - (1 if k == "sessions opened" else 0) for k, v in pg.items()
        }
        self.cpu = {"server": cpu.pop("server") / wall}
        if self._workers:
            used = sum(process_cpu(pid) - self._workers0[n] for n, pid in self._workers.items())
            self.cpu["workers"] = used / wall
        if cpu:
            self.cpu[self._group] = sum(cpu.values()) / wall
        self.cpu |= {name: seconds / wall for name, seconds in servers.items()}
        self.machine_busy = (machine[0] - self._machine0[0]) / wall
        self.cpu["others"] = max(0.0, self.machine_busy - sum(self.cpu.values()))


async def order_statuses(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
    finally:
        await conn.close()
    return {str(row["status"]): int(row["n"]) for row in rows}


def per_client(
    args: argparse.Namespace,
    logins: Sequence[Login],
    tokens: Sequence[str] | None,
    requests_of: Callable[[list[Instrument], list[tuple[str, str]]], list[bytes]],
) -> list[list[bytes]]:
    """Per client connection: the requests it cycles through, as user ``client mod users``,
    given the order symbols rotated to start at ``client mod symbols``."""
    symbols = list(default_universe()[: args.order_symbols])
    clients = []
    for number in range(args.clients):
        user = number % len(logins)
        headers = auth_headers(logins[user], None if tokens is None else tokens[user])
        start = number % len(symbols)
        clients.append(requests_of(symbols[start:] + symbols[:start], headers))
    return clients


def read_requests(symbols: list[Instrument], headers: list[tuple[str, str]]) -> list[bytes]:
    """``GET /api/market/quotes`` of one symbol."""
    path = f"/api/market/quotes?symbols={symbols[0].symbol}"
    return [http_request("GET", path, headers=headers)]


def order_requests(symbols: list[Instrument], headers: list[tuple[str, str]]) -> list[bytes]:
    """A far limit BUY of each symbol."""
    return [
        http_request("POST", "/api/orders", body=order_body(i), headers=headers) for i in symbols
    ]


async def order_entry(
    args: argparse.Namespace, profiles: dict[str, str]
) -> tuple[LoadRun | None, LoadRun | None, LoadRun]:
    """The bare baseline; then, on a fresh ``tradeloom serve``, the authenticated read and
    ``POST /api/orders``."""
    bare_run = None
    body = order_body(default_universe()[0])
    if args.baseline:
        bare = start_bare()
        try:
            await wait_ready(bare, "/docs")
            requests = [[http_request("POST", "/bare", body=body)] for _ in range(args.clients)]
            bare_run = await drive_load(args, bare, "bare", requests, 0.0, args.duration, profiles)
        finally:
            await stop_server(bare)
    names = [f"trader{n:04d}" for n in range(args.order_users)]
    server = await start_platform(args, "orders")
    try:
        say(f"orders: server pid {server.pid} up in {await wait_ready(server, '/readyz'):.1f} s")
        logins = await log_in(server.port, names)
        tokens = await issue_tokens(server.port, logins) if args.auth == "bearer" else None
        symbols = [i.symbol for i in default_universe()[: args.order_symbols]]
        await wait_for_quotes(
            server.port, auth_headers(logins[0], None if tokens is None else tokens[0]), symbols
        )
        say(f"orders: {len(logins)} users logged in ({args.auth}), quotes cached")
        reads = None
        if args.read_duration > 0:
            requests = per_client(args, logins, tokens, read_requests)
            reads = await drive_load(
                args, server, "reads", requests, 0.0, args.read_duration, profiles
            )
        requests = per_client(args, logins, tokens, order_requests)
        run = await drive_load(args, server, "orders", requests, args.rate, args.duration, profiles)
    finally:
        await stop_server(server)
        count_server_warnings(server)
    return bare_run, reads, run


# --- (b) streams: the SSE clients, in child processes ---------------------------------------


class Recorder:
    """What one client process's streams receive; latencies only while ``measuring``.

    The streams of a process receive the same quote bytes many times over (every stream
    watching a symbol gets its newest quote), so timestamps are parsed once and memoized."""

    def __init__(self) -> None:
        self.reset(measuring=False)
        self._stamps: dict[bytes, float] = {}

    def reset(self, measuring: bool) -> None:
        self.measuring = measuring
        self.started = time.perf_counter()
        self.quotes, self.events, self.counts = new_histogram(), new_histogram(), Counter[str]()
        # order.submitted is stamped by the web process (the HTTP handler), every other order
        # event by a worker: apart, they tell which side of the bus the latency is on.
        self.submitted = new_histogram()

    def frames(self, block: bytes, received: float) -> None:
        """Complete SSE frames, ``\\n\\n``-separated, received at ``received`` (epoch s)."""
        counts = self.counts
        counts["chunks"] += 1
        for frame in block.split(b"\n\n"):
            if frame.startswith(b"event: quote"):
                counts["quotes"] += 1
                if self.measuring:
                    observe(self.quotes, received - self._stamp(frame, b'"time":"'))
            elif frame.startswith(b"id: "):
                at = frame.find(b"\nevent: ")
                if at < 0:
                    continue  # the bare id line after the snapshot
                kind = frame[at + 8 : frame.index(b"\n", at + 8)]
                counts[kind.decode()] += 1
                if kind != b"reset" and self.measuring:
                    latency = received - self._stamp(frame, b'"occurred_at":"')
                    observe(self.events, latency)
                    if kind == b"order.submitted":
                        observe(self.submitted, latency)
            elif frame.startswith(b":"):
                counts["heartbeats"] += 1
            elif frame.startswith(b"event: snapshot"):
                counts["snapshots"] += 1

    def _stamp(self, frame: bytes, key: bytes) -> float:
        """The epoch seconds of the ISO 8601 time after ``key`` in ``frame``."""
        at = frame.index(key) + len(key)
        text = frame[at : frame.index(b'"', at)]
        stamp = self._stamps.get(text)
        if stamp is None:
            if len(self._stamps) > 100_000:
                self._stamps.clear()
            stamp = self._stamps[text] = datetime.fromisoformat(text.decode()).timestamp()
        return stamp


class SseStream(asyncio.Protocol):
    """One SSE connection: sends the GET, then parses the chunked body into SSE frames."""

    def __init__(self, request: bytes, recorder: Recorder, opened: asyncio.Future[None]) -> None:
        self._request = request
        self._recorder = recorder
        self.opened = opened
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.closing = False
        self._head = True
        self._buffer = b""
        self._need = -1  # bytes of the current chunk still to come; -1: a size line is next
        self._sse = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        received = time.time()
        buffer = self._buffer + data if self._buffer else data
        if self._head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            if buffer[9:12] != b"200":
                self._fail(ConnectionError(f"HTTP {buffer[9:12].decode()}"))
                return
            self._head, buffer = False, buffer[end + 4 :]
        parts, at, size = [], 0, len(buffer)
        while True:
            if self._need < 0:
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    break
                self._need, at = int(buffer[at:line_end], 16), line_end + 2
            if size - at < self._need + 2:
                break
            parts.append(buffer[at : at + self._need])
            at, self._need = at + self._need + 2, -1
        self._buffer = buffer[at:]
        if not parts:
            return
        text = self._sse + b"".join(parts)
        end = text.rfind(b"\n\n")
        if end < 0:
            self._sse = text
            return
        self._sse = text[end + 2 :]
        self._recorder.frames(text[:end], received)
        if not self.opened.done() and b"event: snapshot" in text:
            self.opened.set_result(None)

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the snapshot"))
        elif not self.closing:
            self._recorder.counts["closed by the server"] += 1


def stream_request(
    k: int, cookies: Sequence[str], symbols: Sequence[str], per_stream: int
) -> bytes:
    """Stream ``k``: user ``k mod users``, ``per_stream`` symbols from ``k mod symbols`` on;
    without cookies, the bare baseline's stream."""
    if not cookies:
        return http_request("GET", "/bare/stream", headers=[("Accept", "text/event-stream")])
    watched = ",".join(symbols[(k + j) % len(symbols)] for j in range(per_stream))
    headers = [("Cookie", cookies[k % len(cookies)]), ("Accept", "text/event-stream")]
    return http_request("GET", f"/api/stream?symbols={watched}", headers=headers)


class StreamClients:
    """The streams of one client process: stream ``k`` for every ``k mod procs == proc``."""

    def __init__(
        self,
        pipe: Connection,
        port: int,
        cookies: list[str],
        symbols: list[str],
        per_stream: int,
        proc: int,
        procs: int,
        concurrency: int,
    ) -> None:
        self._pipe, self._port = pipe, port
        self._cookies, self._symbols, self._per_stream = cookies, symbols, per_stream
        self._procs, self._next = procs, proc
        self._gate = asyncio.Semaphore(concurrency)
        self.recorder = Recorder()
        self.streams: list[SseStream] = []
        self.failed: Counter[str] = Counter()

    async def open_until(self, target: int, budget: float) -> None:
        """Open this process's streams below ``target``, giving up on those not open after
        ``budget`` s; a progress message a second, then ``("opened", open, failed, given
        up)``."""
        ks = range(self._next, target, self._procs)
        self._next = ks[-1] + self._procs if ks else self._next
        self.failed = Counter()
        reporter = asyncio.create_task(self._progress())
        opening = [asyncio.create_task(self._open(k)) for k in ks]
        _, late = await asyncio.wait(opening, timeout=budget) if opening else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        reporter.cancel()
        self._pipe.send(("opened", len(self.streams), self.failed, len(late)))

    async def _open(self, k: int) -> None:
        loop = asyncio.get_running_loop()
        async with self._gate:
            opened: asyncio.Future[None] = loop.create_future()
            request = stream_request(k, self._cookies, self._symbols, self._per_stream)
            stream: SseStream | None = None
            try:
                _, stream = await loop.create_connection(
                    lambda: SseStream(request, self.recorder, opened), HOST, self._port
                )
                async with asyncio.timeout(60):
                    await opened
                self.streams.append(stream)
            except Exception as exc:
                self.failed[str(exc) or type(exc).__name__] += 1
            except asyncio.CancelledError:  # over the budget: hang up
                if stream is not None and stream.transport is not None:
                    stream.closing = True
                    stream.transport.close()
                raise

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._pipe.send(("progress", len(self.streams), sum(self.failed.values())))

    def close(self) -> None:
        for stream in self.streams:
            stream.closing = True
            if stream.transport is not None:
                stream.transport.close()


async def _stream_clients(pipe: Connection, *args: Any) -> None:
    """Obeys the driver: ``("open", n, budget)``, ``("measure",)``, ``("collect",)``,
    ``("close",)``."""
    loop = asyncio.get_running_loop()
    clients = StreamClients(pipe, *args)
    recorder = clients.recorder
    pipe.send("ready")
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command[0] == "open":
            await clients.open_until(command[1], command[2])
        elif command[0] == "measure":
            recorder.reset(measuring=True)
            pipe.send("measuring")
        elif command[0] == "collect":
            elapsed = time.perf_counter() - recorder.started
            pipe.send(
                (
                    "stats",
                    recorder.quotes,
                    recorder.events,
                    recorder.submitted,
                    recorder.counts,
                    elapsed,
                )
            )
            recorder.reset(measuring=False)
        elif command[0] == "close":
            clients.close()
            await asyncio.sleep(0.5)
            pipe.send("closed")
            return


def _stream_main(pipe: Connection, *args: Any) -> None:
    _with_uvloop(_stream_clients(pipe, *args))


@dataclass
class Level:
    """One level of open streams, measured over the hold."""

    streams: int
    opened: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    open_s: float = 0.0
    added: int = 0
    given_up: int = 0  # not open when the opening budget ran out
    rss_mb: float = 0.0
    quotes: list[int] = field(default_factory=new_histogram)
    events: list[int] = field(default_factory=new_histogram)
    submitted: list[int] = field(default_factory=new_histogram)  # order.submitted among events
    counts: Counter[str] = field(default_factory=Counter)
    # Per generation: collections, seconds in all, the longest's upper bound (see gc_between).
    gc_pauses: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # the hold
    gc_opening: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    health: list[float] = field(default_factory=list)
    placed: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    window: float = 0.0  # the hold and its tail: CPU
    recorded: float = 0.0  # what the clients recorded (a little longer): rates


@dataclass
class StreamRun:
    name: str
    users: int
    rss_before_mb: float = 0.0
    login_s: float = 0.0
    levels: list[Level] = field(default_factory=list)
    peak_rss_mb: float = 0.0


async def place_orders(
    port: int, logins: Sequence[Login], rate: float, seconds: float, rng: random.Random
) -> Counter[str]:
    """Open loop: ``rate`` orders/s for ``seconds``, each for a random user of ``logins``
    (cookie + CSRF), over 4 connections; answers counted by status (and error code)."""
    bodies = [order_body(i) for i in default_universe()]
    answers: Counter[str] = Counter()
    total, started, next_index = round(rate * seconds), time.perf_counter(), 0

    async def placer() -> None:
        nonlocal next_index
        http = Http(port)
        try:
            while next_index < total:
                index, next_index = next_index, next_index + 1
                if (delay := started + index / rate - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                login = rng.choice(logins)
                raw = http_request(
                    "POST",
                    "/api/orders",
                    body=rng.choice(bodies),
                    headers=auth_headers(login, None),
                )
                try:
                    status, _, body = await http.send(raw)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    answers[type(exc).__name__] += 1
                    continue
                answers[str(status) if status < 300 else f"{status} {error_code(body)}"] += 1
        finally:
            http.close()

    if rate > 0 and logins:
        await asyncio.gather(*(placer() for _ in range(4)))
    return answers


async def probe_health(
    port: int, seconds: float, path: str = "/healthz", period: float = 0.1
) -> list[float]:
    """``GET path`` round trips, one every ``period`` s for ``seconds``."""
    http, samples = Http(port), []
    raw = http_request("GET", path)
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            begun = time.perf_counter()
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                await http.send(raw)
                samples.append(time.perf_counter() - begun)
            await asyncio.sleep(max(0.0, period - (time.perf_counter() - begun)))
    finally:
        http.close()
    return samples


GcSamples = dict[tuple[str, str], float]
"""``tradeloom_gc_pause_seconds`` samples of the server: (generation, ``count`` / ``sum`` /
a bucket's upper bound) -> value."""


async def gc_samples(port: int) -> GcSamples:
    """The server's garbage-collector pauses so far, from ``/metrics``; empty for a bare
    server (no such metric)."""
    http, found = Http(port), GcSamples()
    try:
        status, _, body = await http.send(http_request("GET", "/metrics"))
    finally:
        http.close()
    if status != 200:
        return found
    pattern = re.compile(
        r"tradeloom_gc_pause_seconds_(count|sum|bucket)"
        r'\{generation="(\d)"(?:,le="([^"]+)")?\} (\S+)'
    )
    for line in body.decode().splitlines():
        match = pattern.match(line)
        if match:
            kind, generation, bound, value = match.groups()
            found[generation, bound if kind == "bucket" else kind] = float(value)
    return found


def gc_between(before: GcSamples, after: GcSamples) -> dict[str, tuple[float, float, float]]:
    """Per generation, the collections between two scrapes: (count, seconds in all, an upper
    bound of the longest: the smallest histogram bucket holding them all)."""
    found: dict[str, tuple[float, float, float]] = {}
    for generation in sorted({g for g, _ in after}):

        def grew(key: str, g: str = generation) -> float:
            return after.get((g, key), 0.0) - before.get((g, key), 0.0)

        count = grew("count")
        buckets = sorted((float(b), b) for g, b in after if g == generation and b[0].isdigit())
        longest = next((bound for bound, label in buckets if grew(label) >= count), 0.0)
        found[generation] = (count, grew("sum"), longest if count else 0.0)
    return found


async def open_streams(
    name: str, children: Sequence[Child], target: int, budget: float, level: Level, before: int
) -> None:
    """Every client process opens its share up to ``target`` within ``budget`` s; a progress
    line every 5 s."""
    loop = asyncio.get_running_loop()
    for child in children:
        child.pipe.send(("open", target, budget))
    started, progress = time.perf_counter(), {c.name: 0 for c in children}
    failed = {c.name: 0 for c in children}
    done: set[str] = set()
    pipes = {id(c.pipe): c for c in children}
    last = started
    while len(done) < len(children):
        ready = await loop.run_in_executor(None, wait, [c.pipe for c in children], 1.0)
        for pipe in ready:
            child = pipes[id(pipe)]
            message = child.pipe.recv()
            if message[0] == "opened":
                progress[child.name] = message[1]
                level.failed.update(message[2])
                level.given_up += message[3]
                done.add(child.name)
            else:
                progress[child.name], failed[child.name] = message[1], message[2]
        if time.perf_counter() - last >= 5.0 and len(done) < len(children):
            last = time.perf_counter()
            opened = sum(progress.values())
            rate = (opened - before) / (last - started)
            say(
                f"{name}: {opened:,} of {target:,} open ({rate:,.0f}/s),"
                f" {sum(failed.values())} failed"
            )
    level.open_s = time.perf_counter() - started
    level.opened = sum(progress.values())
    level.added = level.opened - before


def start_stream_clients(args: argparse.Namespace, port: int, cookies: list[str]) -> list[Child]:
    symbols = [i.symbol for i in default_universe()]
    procs = args.stream_procs
    concurrency = max(1, args.open_concurrency // procs)
    return [
        start_child(
            f"sse{p}",
            _stream_main,
            *(port, cookies, symbols, args.stream_symbols, p, procs, concurrency),
        )
        for p in range(procs)
    ]


async def hold_levels(
    args: argparse.Namespace,
    server: Server,
    run: StreamRun,
    levels: Sequence[int],
    logins: Sequence[Login],
    profiles: dict[str, str],
) -> None:
    """Start the stream clients, then for each level: open up to it, settle, measure."""
    children = start_stream_clients(args, server.port, [login.cookie for login in logins])
    rng = random.Random(42)
    try:
        for child in children:
            if await child.receive() != "ready":
                raise RuntimeError(f"{child.name} did not start")
        run.rss_before_mb = rss_mb(server.pid)
        say(f"{run.name}: {len(children)} client processes; server RSS {run.rss_before_mb:.0f} MB")
        opened = 0
        profile = args.profile if logins else None
        for target in levels:
            level = Level(target)
            profiler = start_profiler(profile, f"opening to {target}", server.pid)
            gc_before = await gc_samples(server.port) if logins else {}
            await open_streams(run.name, children, target, args.open_budget, level, opened)
            if logins:
                level.gc_opening = gc_between(gc_before, await gc_samples(server.port))
            await finish_profiler(profiler, profiles)
            opened = level.opened
            say(
                f"{run.name}: {level.opened:,} open ({level.added:,} added in {level.open_s:.1f} s,"
                f" {level.added / max(level.open_s, 1e-9):,.0f}/s); settling {args.settle:g} s"
            )
            await asyncio.sleep(args.settle)
            hold = args.hold if logins else args.bare_hold
            await measure_level(args, server, children, logins, level, hold, rng, profile, profiles)
            for name in [n for n in profiles if n.startswith(("opening to ", "hold at "))]:
                if not name.endswith(f" {target}"):
                    del profiles[name]  # only the last level's profiles are reported
            run.levels.append(level)
            say(
                f"{run.name}: {level.opened:,} held {hold:g} s: quote p99"
                f" {histogram_ms(level.quotes, 99):.0f} ms, event p99"
                f" {histogram_ms(level.events, 99):.0f} ms, RSS {level.rss_mb:.0f} MB"
            )
            if level.given_up:
                say(
                    f"{run.name}: {level.given_up:,} streams not open after the"
                    f" {args.open_budget:g} s budget: larger levels skipped"
                )
                break
        run.peak_rss_mb = peak_rss_mb(server.pid)
        for child in children:
            await child.ask(("close",))
    finally:
        await join_children(children)


async def bare_streams(args: argparse.Namespace, profiles: dict[str, str]) -> StreamRun:
    """The baseline: the largest level of bare FastAPI SSE streams on the bare app."""
    server = start_bare()
    run = StreamRun("bare streams", users=0)
    try:
        await wait_ready(server, "/docs")
        await hold_levels(args, server, run, args.streams[-1:], [], profiles)
    finally:
        await stop_server(server)
    return run


async def streams_phase(args: argparse.Namespace, profiles: dict[str, str]) -> StreamRun:
    """Streams on one fresh ``tradeloom serve``, level by level (see the module docstring)."""
    names = [f"viewer{n:05d}" for n in range(args.stream_users)]
    server = await start_platform(args, "streams")
    run = StreamRun("streams", users=len(names))
    try:
        say(f"streams: server pid {server.pid} up in {await wait_ready(server, '/readyz'):.1f} s")
        begun = time.perf_counter()
        logins = await log_in(server.port, names)
        run.login_s = time.perf_counter() - begun
        say(f"streams: {len(logins):,} users logged in in {run.login_s:.1f} s")
        await hold_levels(args, server, run, args.streams, logins, profiles)
        say("streams: closed; stopping the server")
    finally:
        await stop_server(server)
        count_server_warnings(server)
    return run


async def measure_level(
    args: argparse.Namespace,
    server: Server,
    children: Sequence[Child],
    logins: Sequence[Login],
    level: Level,
    hold: float,
    rng: random.Random,
    profile: str | None,
    profiles: dict[str, str],
) -> None:
    """Measure one level over ``hold`` s: latencies, orders placed, health, CPU, RSS."""
    for child in children:
        await child.ask(("measure",))
    probe = Probe(server, children, "stream clients")
    await probe.start()
    profiler = start_profiler(profile, f"hold at {level.streams}", server.pid)
    with_streams = logins[: min(len(logins), level.opened)]
    gc_before = await gc_samples(server.port) if logins else {}
    level.placed, level.health = await asyncio.gather(
        place_orders(server.port, with_streams, args.stream_order_rate, hold, rng),
        probe_health(server.port, hold, "/healthz" if logins else "/docs"),
    )
    # Events of orders placed at the end of the hold are still on their way: wait for them.
    tail = min(1.0, hold / 4)
    await asyncio.sleep(tail)
    await finish_profiler(profiler, profiles)
    await probe.stop()
    if logins:
        level.gc_pauses = gc_between(gc_before, await gc_samples(server.port))
    level.window = hold + tail
    level.cpu, level.machine_busy = probe.cpu, probe.machine_busy
    level.rss_mb = rss_mb(server.pid)
    for child in children:
        _, quotes, events, submitted, counts, elapsed = await child.ask(("collect",))
        level.recorded = max(level.recorded, elapsed)
        level.quotes = merged([level.quotes, quotes])
        level.events = merged([level.events, events])
        level.submitted = merged([level.submitted, submitted])
        level.counts.update(counts)


# --- report ---------------------------------------------------------------------------------


def _p(samples: Sequence[float], q: int) -> float:
    return percentile(sorted(samples), q) * 1000 if samples else float("nan")


def _ms(samples: Sequence[float]) -> str:
    """p50 / p99 / max in ms (p99 at most the max: few samples make the quantile
    extrapolate)."""
    if not samples:
        return "n/a"
    top = max(samples) * 1000
    return f"{_p(samples, 50):.1f} / {min(_p(samples, 99), top):.1f} / {top:.0f} ms"


def _hist(histogram: Sequence[int]) -> str:
    if not sum(histogram):
        return "n/a"
    p50, p99, top = (
        histogram_ms(histogram, 50),
        histogram_ms(histogram, 99),
        histogram_max(histogram),
    )
    return f"{p50:.0f} / {p99:.0f} / {top:.0f} ms over {sum(histogram):,}"


def _gc(pauses: dict[str, tuple[float, float, float]]) -> str:
    return ", ".join(
        f"gen{g} x{count:.0f} ({seconds * 1000:,.0f} ms in all"
        + (f", longest ≤ {longest * 1000:,.0f} ms)" if count else ")")
        for g, (count, seconds, longest) in pauses.items()
    )


def _cpu(cpu: dict[str, float], busy: float) -> str:
    return (
        ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + f" s/s; machine {busy:.2f} of {CORES}"
    )


WHAT = {
    "bare": "POST /bare (bare FastAPI, same uvicorn options)",
    "reads": "GET /api/market/quotes?symbols=1 (auth, rate limit, one cache read)",
    "orders": "POST /api/orders",
}


def load_rows(run: LoadRun, bare: LoadRun | None) -> list[tuple[str, str]]:
    what = WHAT[run.label]
    mode = f"open loop {run.rate:,.0f}/s offered" if run.rate else "closed loop"
    rows = [
        (
            f"{run.label}",
            f"{what}, {mode}, {run.clients} keep-alive connections; {run.ok_in_window:,} 2xx in "
            f"{run.window:g} s = {run.per_second:,.0f}/s",
        ),
        (f"  {run.label} latency p50/p99/max", _ms(run.latencies)),
        (
            f"  {run.label} answers",
            ", ".join(f"{k} x{v:,}" for k, v in sorted(run.statuses.items()))
            + (
                "; " + ", ".join(f"{k} x{v}" for k, v in run.codes.most_common())
                if run.codes
                else ""
            )
            + (
                "; errors " + ", ".join(f"{k} x{v}" for k, v in run.errors.items())
                if run.errors
                else ""
            ),
        ),
    ]
    if run.rate:
        rows.append(
            (
                f"  {run.label} start lateness",
                _ms(run.late) + f" (no free connection: open-loop queueing); {run.offered:,}"
                f" sent in the window, {run.not_started:,} due but not sent",
            )
        )
    rows.append((f"  {run.label} CPU", _cpu(run.cpu, run.machine_busy)))
    rows.append((f"  {run.label} server peak RSS", f"{run.rss_mb:.0f} MB"))
    if run.pg:
        answered = max(sum(run.statuses.values()), 1)
        rows.append(
            (
                f"  {run.label} PostgreSQL in window",
                f"{run.pg['commits'] / answered:.1f} commits per answer (whole server);"
                f" {run.pg['sessions opened']:,} new sessions (pool connections opened)",
            )
        )
    if run.order_statuses:
        rows.append(
            (
                "  orders by status at window end",
                ", ".join(f"{k} {v:,}" for k, v in sorted(run.order_statuses.items()))
                + " (pending_new: not yet through execution)",
            )
        )
    if bare is not None and run.label != "bare":
        rows.append((f"  {run.label} / bare", f"{run.per_second / bare.per_second:.3f}x"))
    return rows


def stream_rows(args: argparse.Namespace, run: StreamRun) -> list[tuple[str, str]]:
    if run.users:
        what = (
            f"GET /api/stream, {run.users:,} users (cookie sessions), {args.stream_symbols}"
            f" symbols a stream; every symbol quoted every {args.quote_interval:g} s;"
            f" {args.stream_order_rate:g} orders/s placed during each hold"
        )
    else:
        what = "GET /bare/stream (bare FastAPI StreamingResponse, 5 quotes a second, no hub)"
    rows = [
        (run.name, f"{what}; {args.stream_procs} client processes"),
        (
            "  server RSS before streams",
            f"{run.rss_before_mb:.0f} MB; peak {run.peak_rss_mb:.0f} MB",
        ),
    ]
    for level in run.levels:
        n = max(level.opened, 1)
        per_stream = level.counts["quotes"] / n / max(level.recorded, 1e-9)
        events = sum(v for k, v in level.counts.items() if k.startswith(("order.", "position.")))
        failed = ", ".join(f"{k} x{v}" for k, v in level.failed.most_common(3)) or "none failed"
        if level.given_up:
            failed += f"; {level.given_up:,} not open after the {args.open_budget:g} s budget"
        rows += [
            (
                f"  N={level.streams:,}",
                f"{level.opened:,} open ({failed}); +{level.added:,} in {level.open_s:.1f} s "
                f"= {level.added / max(level.open_s, 1e-9):,.0f} opens/s",
            ),
            (
                "    RSS per connection",
                f"{per_connection_kb(run, level):.1f} KB ({level.rss_mb:.0f} MB with"
                f" {level.opened:,} open)",
            ),
            (
                "    quote latency p50/p99/max",
                _hist(level.quotes) + f" ({per_stream:.2f} quotes/s per stream)",
            ),
        ]
        if run.users:
            rows += [
                (
                    "    order-event latency p50/p99/max",
                    _hist(level.events) + f" ({events:,} received)",
                ),
                (
                    "      order.submitted (stamped in the server)",
                    _hist(level.submitted),
                ),
                (
                    "      the rest (stamped in the workers)",
                    _hist([e - s for e, s in zip(level.events, level.submitted, strict=True)]),
                ),
                (
                    "    orders placed in the hold",
                    ", ".join(f"{k} x{v}" for k, v in level.placed.most_common()) or "none",
                ),
            ]
        rows += [
            (f"    {'/healthz' if run.users else '/docs'} p50/p99/max", _ms(level.health)),
            *(
                [
                    ("    server GC pauses while opening", _gc(level.gc_opening)),
                    ("    server GC pauses in the hold", _gc(level.gc_pauses)),
                ]
                if level.gc_pauses
                else []
            ),
            (
                "    received",
                f"{level.counts['chunks']:,} chunks, {level.counts['heartbeats']:,} heartbeats, "
                f"{level.counts['reset']:,} resets, {level.counts['closed by the server']:,} "
                "streams closed by the server",
            ),
            ("    CPU", _cpu(level.cpu, level.machine_busy)),
        ]
    measured = {level.streams for level in run.levels}
    for streams in [n for n in args.streams if n not in measured] if run.users else []:
        rows.append((f"  N={streams:,}", "not attempted: the level before was not reached"))
    return rows


def per_connection_kb(run: StreamRun, level: Level) -> float:
    return (level.rss_mb - run.rss_before_mb) * 1024 / max(level.opened, 1)


def report(
    args: argparse.Namespace,
    bare: LoadRun | None,
    reads: LoadRun | None,
    orders: LoadRun | None,
    streams: Sequence[StreamRun],
    profiles: dict[str, str],
) -> None:
    rows: list[tuple[str, str]] = [
        (
            "machine",
            f"{CORES} cores; server, PostgreSQL, Redis, NATS, load generators and stream "
            "clients ALL on this machine",
        )
    ]
    checks: list[tuple[str, bool]] = []
    for run in (bare, reads, orders):
        if run is not None:
            rows += load_rows(run, bare)
    if orders is not None:
        rate, p99 = orders.per_second, _p(orders.latencies, 99)
        checks += [
            (f"≥800 orders/s ({rate:,.0f})", rate >= 800),
            (f"order p99 ≤50 ms ({p99:.1f})", p99 <= 50),
        ]
        if bare is not None:
            ratio = rate / bare.per_second
            checks.append((f"orders/bare ≥0.2 ({ratio:.2f})", ratio >= 0.2))
    for stream_run in streams:
        rows += stream_rows(args, stream_run)
    tradeloom = next((run for run in streams if run.users), None)
    by_level = {level.streams: level for level in tradeloom.levels} if tradeloom else {}
    for n in args.streams if tradeloom else []:
        level = by_level.get(n)
        if level is None:
            checks.append((f"N={n:,}: all open (not attempted)", False))
            continue
        assert tradeloom is not None
        per_conn = per_connection_kb(tradeloom, level)
        q99, e99 = histogram_ms(level.quotes, 99), histogram_ms(level.events, 99)
        checks += [
            (f"N={n:,}: all open ({level.opened:,})", level.opened >= n),
            (f"N={n:,}: quote p99 ≤500 ms ({q99:.0f})", q99 <= 500),
            (f"N={n:,}: order-event p99 ≤500 ms ({e99:.0f})", e99 <= 500),
            (f"N={n:,}: ≤40 KB/connection ({per_conn:.1f})", per_conn <= 40),
        ]
    if WARNINGS:
        rows.append(("log warnings", ", ".join(f"{k} x{v}" for k, v in WARNINGS.most_common())))
    rows += [(f"target {name}", "MET" if ok else "NOT MET") for name, ok in checks]
    print("$ python " + " ".join(sys.argv))
    print_rows(rows)
    for name, path in profiles.items():
        print_top_functions(
            f"server during {name}",
            path,
            args.profile_top,
            skip=("process ", "thread "),
            idle=IDLE,
        )


# --- main -----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    token = uuid.uuid4().hex[:8]
    args.namespace = f"bench{token}"
    database = f"tl_bench_{token}"
    admin_url = args.postgres_url
    args.database_url = admin_url.rsplit("/", 1)[0] + f"/{database}"
    settings = Settings(
        database_url=args.database_url,
        bus_url=args.nats_url,
        cache_url=args.redis_url,
        namespace=args.namespace,
        password_time_cost=CHEAP_ARGON2["time_cost"],
        password_memory_cost=CHEAP_ARGON2["memory_cost"],
        password_parallelism=CHEAP_ARGON2["parallelism"],
    )
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM cancels the run like Ctrl-C does, so the servers stop and everything is dropped.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    profiles: dict[str, str] = {}
    bare = reads = orders = None
    streams: list[StreamRun] = []
    await admin_execute(admin_url, f'CREATE DATABASE "{database}"')
    pump = QuotePump(settings, args.quote_interval)
    try:
        await upgrade_database(args.database_url)
        users = [f"trader{n:04d}" for n in range(args.order_users if args.orders else 0)]
        users += [f"viewer{n:05d}" for n in range(args.stream_users if args.streams else 0)]
        begun = time.perf_counter()
        await register_users(settings, users, args.cash)
        say(
            f"registered {len(users):,} users in {time.perf_counter() - begun:.1f} s (cheap argon2)"
        )
        await pump.start()
        if args.orders:
            pump.interval = 1.0  # fresh prices for risk; few updates, few paper-venue scans
            bare, reads, orders = await order_entry(args, profiles)
        if args.streams:
            pump.interval = args.quote_interval
            if args.baseline:
                streams.append(await bare_streams(args, profiles))
            streams.append(await streams_phase(args, profiles))
    finally:
        await pump.stop()
        await drop_bench_run(
            nats_url=args.nats_url,
            stream_prefix=args.namespace.upper(),
            redis_url=args.redis_url,
            key_prefix=args.namespace,
            admin_url=admin_url,
            database=database,
        )
    say(f"done; {pump.sent:,} quotes published")
    report(args, bare, reads, orders, streams, profiles)


def _levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(b <= a for a, b in zip([0, *levels], levels, strict=False)):
        raise argparse.ArgumentTypeError("increasing positive counts, e.g. 2000,5000,15000")
    return levels


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    order = parser.add_argument_group("(a) order entry")
    order.add_argument("--clients", type=int, default=16, help="keep-alive connections")
    order.add_argument("--rate", type=float, default=0.0, help="orders/s offered; 0: closed loop")
    order.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    order.add_argument("--read-duration", type=float, default=5.0, help="s of reads; 0: none")
    order.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    order.add_argument("--load-procs", type=int, default=1, help="load-generator processes")
    order.add_argument("--order-users", type=int, default=200, help="users placing orders")
    order.add_argument("--order-symbols", type=int, default=5, help="symbols ordered")
    order.add_argument("--auth", choices=("bearer", "cookie"), default="bearer")
    order.add_argument("--cash", type=int, default=1_000_000_000, help="opening cash a user")
    order.add_argument("--no-baseline", dest="baseline", action="store_false")
    order.add_argument("--skip-orders", dest="orders", action="store_false")
    stream = parser.add_argument_group("(b) streams")
    stream.add_argument("--streams", type=_levels, default=[2000, 5000, 15000], help="levels")
    stream.add_argument("--skip-streams", dest="streams", action="store_const", const=[])
    stream.add_argument("--stream-users", type=int, default=1000, help="users holding streams")
    stream.add_argument("--stream-symbols", type=int, default=5, help="symbols a stream")
    stream.add_argument("--stream-procs", type=int, default=3, help="client processes")
    stream.add_argument("--open-concurrency", type=int, default=96, help="opens in flight")
    stream.add_argument("--hold", type=float, default=8.0, help="seconds measured a level")
    stream.add_argument(
        "--open-budget", type=float, default=150.0, help="s to reach a level, then skip on"
    )
    stream.add_argument("--bare-hold", type=float, default=5.0, help="s, bare baseline")
    stream.add_argument("--settle", type=float, default=2.0, help="seconds before measuring")
    stream.add_argument("--stream-order-rate", type=float, default=20.0, help="orders/s")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes running the consumers; 0: the server"
    )
    parser.add_argument("--quote-interval", type=float, default=0.25, help="s between quotes")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the server into DIR")
    parser.add_argument("--profile-top", type=int, default=20, help="functions shown")
    parser.add_argument("--nats-url", type=local_url, default="nats://127.0.0.1:4222")
    parser.add_argument("--redis-url", type=local_url, default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--postgres-url", type=local_url, default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    if args.clients < 1 or args.duration <= 0 or args.order_users < 1 or args.stream_users < 1:
        parser.error("--clients, --duration and the user counts must be positive")
    needed = max(args.streams, default=0)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if needed + 1000 > limit or needed // args.stream_procs + 1000 > limit:
        parser.error(f"{needed:,} streams need more than ulimit -n {limit:,} file descriptors")
    return args


if __name__ == "__main__":
    _quiet_logs()
    try:
        asyncio.run(main(parse_args()))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("web.py: interrupted (servers stopped, database and namespace dropped)")
        sys.exit(1)

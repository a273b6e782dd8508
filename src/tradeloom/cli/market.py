"""``tradeloom market``: run the simulated market, replay recorded data, show candles."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tradeloom.bootstrap import Platform, build_platform, open_database
from tradeloom.cli.common import cancel_all, settings_of
from tradeloom.config import Settings
from tradeloom.domain.market import Candle, Interval
from tradeloom.domain.time import SystemClock
from tradeloom.market_data.candle_store import CandleQueries
from tradeloom.market_data.feeds.replay import ReplayFeed, ReplayFileError
from tradeloom.market_data.loopback import ALL_WIRES, SimulatedExchange, Wire
from tradeloom.market_data.simulator import SimulationSettings
from tradeloom.market_data.universe import default_universe, load_universe

market_app = typer.Typer(help="Market data: simulate, replay, candles.", no_args_is_help=True)
console = Console()


def _wires(text: str) -> tuple[Wire, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in ALL_WIRES]
    if unknown or not names:
        raise typer.BadParameter(f"expected a comma-separated subset of {', '.join(ALL_WIRES)}")
    return tuple(name for name in ALL_WIRES if name in names)


@market_app.command()
def simulate(
    ctx: typer.Context,
    rate: Annotated[float, typer.Option(min=1, help="ticks per second over all symbols")] = 500,
    seed: Annotated[int, typer.Option(help="random seed: the same seed, the same market")] = 42,
    wires: Annotated[str, typer.Option(help="feeds to run: json_ws,fix,rest_poll")] = ",".join(
        ALL_WIRES
    ),
    universe: Annotated[
        Path | None, typer.Option(help="CSV of instruments (default: 50 built in)")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="seconds to run (default: until Ctrl-C)")
    ] = None,
) -> None:
    """Start the simulated exchange and its feeds, publishing into the platform."""
    settings = settings_of(ctx)
    instruments = load_universe(universe) if universe else default_universe()
    exchange = SimulatedExchange(
        instruments,
        SystemClock(),
        SimulationSettings(seed=seed, rate=rate),
        wires=_wires(wires),
        rate=rate,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_simulate(build_platform(settings), exchange, duration))


async def _simulate(
    platform: Platform, exchange: SimulatedExchange, duration: float | None
) -> None:
    await platform.start()
    await exchange.start()
    exchange.run()
    feeds = exchange.feeds()
    tasks = [asyncio.create_task(platform.market_data.publisher.publish_feed(f)) for f in feeds]
    loop = asyncio.get_running_loop()
    ends = None if duration is None else loop.time() + duration
    try:
        while ends is None or loop.time() < ends:
            await asyncio.sleep(5.0 if ends is None else min(5.0, ends - loop.time()))
            counts = ", ".join(f"{f.name} {f.counters.updates}" for f in feeds)
            published = platform.market_data.publisher.published
            console.print(f"published {published} updates ({counts})")
    finally:
        await cancel_all(tasks)
        await exchange.stop()
        await platform.close()


@market_app.command()
def replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or Parquet of ticks or bars")],
    speed: Annotated[
        float | None,
        typer.Option(min=0.0001, help="1 = recorded pace, 10 = ten times faster"),
    ] = None,
) -> None:
    """Replay recorded ticks or bars into the platform (as fast as possible by default)."""
    if not file.is_file():
        raise typer.BadParameter(f"{file} is not a file", param_hint="FILE")
    feed = ReplayFeed(file, speed=speed)
    platform = build_platform(settings_of(ctx), close_idle_bars=False)
    try:
        asyncio.run(_replay(platform, feed))
    except ReplayFileError as exc:
        console.print(f"[red]tradeloom: {file}: {exc}[/red]")
        raise typer.Exit(1) from None


async def _replay(platform: Platform, feed: ReplayFeed) -> None:
    await platform.start()
    market = platform.market_data
    try:
        with Progress(
            TextColumn("replaying {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(feed.path.name, total=None)
            runner = asyncio.create_task(market.publisher.publish_feed(feed))
            while not runner.done():
                progress.update(task, total=feed.progress.total, completed=feed.progress.done)
                await asyncio.sleep(0.1)
            await runner
            progress.update(task, total=feed.progress.total, completed=feed.progress.done)
        await market.publisher.stop()
        await market.consumer.wait_until_consumed(market.publisher.published)
        closed = await market.recorder.close_all()
    finally:
        await platform.close()
    counters = feed.counters
    console.print(
        f"replayed {counters.received} rows into {counters.updates} updates "
        f"({counters.malformed} malformed rows skipped); closed the {closed} bars still open"
    )


@market_app.command()
def candles(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="the instrument, e.g. AAPL")],
    interval: Annotated[str, typer.Option(help="1m, 5m or 1h")] = "1m",
    limit: Annotated[int, typer.Option(min=1, max=5000, help="the latest N bars")] = 20,
    start: Annotated[datetime | None, typer.Option(help="from (UTC ISO time)")] = None,
    end: Annotated[datetime | None, typer.Option(help="until (UTC ISO time)")] = None,
) -> None:
    """Print a table of candles from the database."""
    try:
        bar_interval = Interval.parse(interval)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--interval") from None
    bars = asyncio.run(_candles(settings_of(ctx), symbol, bar_interval, start, end, limit))
    table = Table(title=f"{symbol} {bar_interval.value} candles (UTC)")
    for column in ("start", "open", "high", "low", "close", "volume", "trades"):
        table.add_column(column, justify="left" if column == "start" else "right")
    for bar in bars:
        table.add_row(
            bar.start.strftime("%Y-%m-%d %H:%M"),
            *(str(v) for v in (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades)),
        )
    console.print(table if bars else f"no {bar_interval.value} candles for {symbol}")


async def _candles(
    settings: Settings,
    symbol: str,
    interval: Interval,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> list[Candle]:
    database = await open_database(settings)
    try:
        return await CandleQueries(database).candles(
            symbol, interval, _as_utc(start), _as_utc(end), limit
        )
    finally:
        await database.dispose()


def _as_utc(moment: datetime | None) -> datetime | None:
    """Command-line times are UTC: a time without a zone is taken as UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

"""The loopback exchange runs every wire format at once, each symbol on exactly one feed."""

from __future__ import annotations

from tests.unit.market_data.helpers import T0, Collector, wait_until
from tradeloom.domain.time import ManualClock
from tradeloom.market_data.feeds.base import Backoff
from tradeloom.market_data.loopback import SimulatedExchange
from tradeloom.market_data.simulator import SimulationSettings
from tradeloom.market_data.universe import default_universe


async def test_all_wire_formats_run_side_by_side_on_disjoint_symbols() -> None:
    exchange = SimulatedExchange(
        default_universe()[:9],
        ManualClock(T0),
        SimulationSettings(seed=3),
        rate=3000,
        limit=300,
        rest_interval=0.01,
    )
    await exchange.start()
    feeds = exchange.feeds(Backoff(initial=0.01))
    collectors = {feed.name: Collector(feed.updates()) for feed in feeds}
    try:
        hubs = exchange.hubs()
        await wait_until(lambda: all(hub.subscribers == 1 for hub in hubs.values()), "clients")
        exchange.run()
        await wait_until(
            lambda: all(len(c.updates) >= 10 for c in collectors.values()), "updates on every feed"
        )
    finally:
        for collector in collectors.values():
            await collector.stop()
        await exchange.stop()
    symbols = {name: {u.symbol for u in c.updates} for name, c in collectors.items()}
    assert set(symbols) == {"json_ws", "fix", "rest_poll"}
    assert sum(len(s) for s in symbols.values()) == len(set().union(*symbols.values())) == 9
    assert all(feed.counters.malformed == 0 for feed in feeds)

"""Positions and account summaries as a user reads them: only their own, valued at fresh
last prices (the mark is the mid, else the last trade), never at a stale or made-up one."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.unit.positions.world import START, D, fill_event, open_account
from tradeloom.cache.memory import MemoryCache
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.time import ManualClock
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.positions import PositionProjection, PositionQueries
from tradeloom.positions.queries import AccountNotFound
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox


def quote(symbol: str, bid: str | None, ask: str | None, last: str | None) -> PriceUpdate:
    return PriceUpdate(
        symbol=symbol,
        bid=None if bid is None else D(bid),
        ask=None if ask is None else D(ask),
        last=None if last is None else D(last),
        volume=D(0),
        exchange_time=START,
        venue="TEST",
    )


class World:
    def __init__(self, database: Database, clock: ManualClock, unique: str) -> None:
        self.database = database
        self.clock = clock
        self.prices = LastPrices(MemoryCache(), clock)
        self.users = {name: f"{name}-{unique}" for name in ("alice", "bob", "mallory")}
        self.alice = self.bob = ""  # their account ids

    async def trade(self) -> None:
        """alice: long 10 AAPL @ 100, short 5 MSFT @ 50, flat TSLA (+20); bob: 1 AAPL."""
        self.alice = await open_account(self.database, self.users["alice"], cash="10000")
        self.bob = await open_account(self.database, self.users["bob"], cash="500")
        a, minute = self.alice, timedelta(minutes=1)
        fills = [
            fill_event(a, "AAPL", "buy", "10", "100", fee="1"),
            fill_event(a, "MSFT", "sell", "5", "50", filled_at=START + minute),
            fill_event(a, "TSLA", "buy", "2", "200", filled_at=START + minute),
            fill_event(a, "TSLA", "sell", "2", "210", filled_at=START + 2 * minute),
            fill_event(self.bob, "AAPL", "buy", "1", "100"),
        ]
        clock = self.clock
        projection = PositionProjection(MemoryBus(MemoryBroker()), self.database, Outbox(), clock)
        await projection.handle(fills)

    def queries(self, *, prices: bool = True) -> PositionQueries:
        return PositionQueries(self.database, self.prices if prices else None)


@pytest.fixture
async def world(database: Database, clock: ManualClock, unique: str) -> World:
    made = World(database, clock, unique)
    await made.trade()
    return made


async def test_a_user_sees_only_their_own_positions_and_accounts(world: World) -> None:
    queries, (alice, bob, mallory) = world.queries(), world.users.values()
    mine = await queries.positions(alice)
    assert {view.account_id for view in mine} == {world.alice}
    assert [view.symbol for view in mine] == ["AAPL", "MSFT", "TSLA"]
    assert await queries.positions(alice, world.bob) == []
    assert [v.account_id for v in await queries.positions(bob)] == [world.bob]
    with pytest.raises(AccountNotFound) as refused:
        await queries.account_summary(alice, world.bob)
    with pytest.raises(AccountNotFound) as unknown:
        await queries.account_summary(alice, "acc-nobody")
    assert refused.value.code == unknown.value.code == "account.not_found"
    assert await queries.positions(mallory) == []


async def test_positions_are_valued_at_the_mid_or_the_last_trade(world: World) -> None:
    await world.prices.record([quote("AAPL", "109", "111", "105"), quote("MSFT", None, None, "40")])
    aapl, msft, tsla = await world.queries().positions(world.users["alice"], world.alice)
    assert (aapl.quantity, aapl.average_cost, aapl.realized_pnl, aapl.fees) == (
        D(10),
        D(100),
        D(-1),
        D(1),
    )
    assert (aapl.mark, aapl.market_value, aapl.unrealized_pnl) == (D(110), D(1100), D(100))
    assert (msft.mark, msft.market_value, msft.unrealized_pnl) == (D(40), D(-200), D(50))
    assert (tsla.quantity, tsla.realized_pnl, tsla.market_value, tsla.unrealized_pnl) == (
        D(0),
        D(20),
        D(0),
        D(0),
    )
    assert tsla.mark is None  # flat: worth 0 at any price, so none is asked for

    summary = await world.queries().account_summary(world.users["alice"], world.alice)
    cash = D(10000) - 1001 + 250 - 400 + 420
    assert (summary.cash, summary.opening_cash, summary.currency) == (cash, D(10000), "USD")
    assert (summary.realized_pnl, summary.fees, summary.open_positions) == (D(19), D(1), 2)
    assert (summary.market_value, summary.unrealized_pnl) == (D(900), D(150))
    assert summary.equity == cash + 900


async def test_without_a_fresh_price_values_are_unknown_not_zero(world: World) -> None:
    await world.prices.record([quote("AAPL", "109", "111", None), quote("MSFT", "39", "41", None)])
    world.clock.advance(timedelta(seconds=6))  # past the cache's 5 s: both prices are stale
    views = await world.queries().positions(world.users["alice"], world.alice)
    assert [(v.mark, v.market_value, v.unrealized_pnl) for v in views[:2]] == [(None,) * 3] * 2
    summary = await world.queries().account_summary(world.users["alice"], world.alice)
    assert (summary.market_value, summary.unrealized_pnl, summary.equity) == (None, None, None)
    assert summary.realized_pnl == 19  # what is known is still shown


async def test_one_missing_price_makes_the_account_totals_unknown(world: World) -> None:
    await world.prices.record([quote("AAPL", "109", "111", None)])
    summary = await world.queries().account_summary(world.users["alice"], world.alice)
    assert (summary.market_value, summary.unrealized_pnl, summary.equity) == (None, None, None)
    bobs = await world.queries().account_summary(world.users["bob"], world.bob)
    assert (bobs.market_value, bobs.unrealized_pnl, bobs.equity) == (D(110), D(10), D(510))


async def test_without_a_price_source_open_positions_have_no_value(world: World) -> None:
    views = await world.queries(prices=False).positions(world.users["bob"])
    assert [(v.mark, v.market_value, v.unrealized_pnl) for v in views] == [(None, None, None)]

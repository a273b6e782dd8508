"""How many cache round trips a risk check takes: the read, then the reserving script; a
second read only when the account holds a symbol this engine has not seen it hold."""

from __future__ import annotations

from decimal import Decimal

from tests.unit.risk.world import CountingCache, RiskWorld, rejected
from tradeloom.domain.orders import Side
from tradeloom.risk import TradingState

CHECK = {"get_many": 1, "run_script risk_reserve": 1}


def trips(world: RiskWorld) -> dict[str, int]:
    assert isinstance(world.cache, CountingCache)
    return dict(world.cache.taken())


async def test_a_check_is_one_read_and_one_script(counted: RiskWorld) -> None:
    trips(counted)
    await counted.place("A1", "AAPL", Side.BUY, "10", "100")
    assert trips(counted) == CHECK
    await counted.place("A1", "MSFT", Side.SELL, "1", "100")
    assert trips(counted) == CHECK


async def test_a_newly_held_symbol_costs_one_more_read_once(counted: RiskWorld) -> None:
    await counted.limits.set_limits("u1", max_concentration=Decimal(1))
    for symbol in ("MSFT", "TSLA"):
        bought = await counted.place("A1", symbol, Side.BUY, "10", "100")
        await counted.fill(bought, "10", "100")
    trips(counted)
    await counted.place("A1", "AAPL", Side.BUY, "1", "100")
    assert trips(counted) == {**CHECK, "get_many": 2}, "MSFT and TSLA not yet known as held"
    await counted.place("A1", "AAPL", Side.BUY, "1", "100")
    await counted.place("A1", "MSFT", Side.BUY, "1", "100")
    assert trips(counted) == {"get_many": 2, "run_script risk_reserve": 2}


async def test_what_is_read_ahead_is_what_concentration_values(counted: RiskWorld) -> None:
    """Positions and prices read along with the rest (symbols known held) value the account
    as a fresh read does: a price change of a held symbol moves the cap at once."""
    tsla = await counted.place("A1", "TSLA", Side.BUY, "100", "100")
    await counted.fill(tsla, "100", "100")  # cash 90,000 + TSLA 10,000
    await counted.place("A1", "AAPL", Side.BUY, "1", "100")  # TSLA now known held
    await counted.quote("TSLA", last="200")  # equity 110,000; 20% = 22,000 = 220 AAPL
    trips(counted)
    await counted.place("A1", "AAPL", Side.BUY, "219", "100")
    assert trips(counted) == CHECK
    await rejected("risk.concentration", counted.place("A1", "AAPL", Side.BUY, "1", "100"))


async def test_a_refusal_before_any_bound_reserves_nothing_after_one_read(
    counted: RiskWorld,
) -> None:
    await counted.limits.set_trading_state("u1", TradingState.HALTED)
    trips(counted)
    await rejected("risk.halted", counted.place("A1", "AAPL", Side.BUY, "1", "100"))
    assert trips(counted) == {"get_many": 1}

"""Each built-in rule on the memory cache: what passes, what is refused, with which code."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pytest

from tests.unit.risk.world import ManualMonotonic, RiskWorld, outcomes, rejected
from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import CacheScript
from tradeloom.domain.orders import OrderType, Side
from tradeloom.risk import PLATFORM, TradingState

BUY, SELL = Side.BUY, Side.SELL


async def test_an_order_within_every_limit_is_accepted_and_reserves_its_notional(
    world: RiskWorld,
) -> None:
    reservation = await world.place("A1", "AAPL", BUY, "10", "100")
    assert reservation.notional == Decimal("1000")
    assert reservation.reserved == Decimal("1000")
    snapshot = await world.exposure.snapshot("A1")
    assert (snapshot.reserved_units, snapshot.open_orders) == (1000 * 10**4, 1)
    assert outcomes(world.latencies) == ["accepted"]
    assert reservation.latency >= 0


async def test_a_market_buy_is_valued_at_the_ask_and_a_market_sell_at_the_bid(
    world: RiskWorld,
) -> None:
    await world.limits.set_limits("u1", max_concentration=Decimal(1))
    buy = await world.place("A1", "AAPL", BUY, "3")
    assert buy.notional == Decimal("300.03")
    await world.fill(buy, "3", "100.01")
    sell = await world.place("A1", "AAPL", SELL, "2")
    assert (sell.notional, sell.reserved) == (Decimal("199.98"), Decimal(0))


async def test_without_an_ask_a_market_buy_uses_the_last_price(world: RiskWorld) -> None:
    await world.quote("MSFT", last="50")
    assert (await world.place("A1", "MSFT", BUY, "2")).notional == Decimal("100")


async def test_a_buy_stop_is_valued_no_lower_than_the_market(world: RiskWorld) -> None:
    low = await world.place("A1", "AAPL", BUY, "1", order_type=OrderType.STOP, stop="90")
    high = await world.place("A1", "AAPL", BUY, "1", order_type=OrderType.STOP, stop="110")
    assert (low.notional, high.notional) == (Decimal("100.01"), Decimal("110"))


async def test_max_order_notional(world: RiskWorld) -> None:
    await world.limits.set_limits("u1", max_order_notional=Decimal("5000"))
    await world.place("A1", "AAPL", BUY, "50", "100")
    error = await rejected("risk.max_order_notional", world.place("A1", "AAPL", BUY, "51", "100"))
    assert "5100" in error.message


async def test_buying_power_is_cash_minus_what_open_buys_reserve(world: RiskWorld) -> None:
    await world.limits.set_limits("u1", max_concentration=Decimal(1))
    await world.place("A1", "AAPL", BUY, "600", "100")
    await world.place("A1", "MSFT", BUY, "400", "100")  # exactly all of the 100,000
    await rejected("risk.buying_power", world.place("A1", "TSLA", BUY, "1", "0.01"))
    await world.place("A1", "TSLA", SELL, "1", "100")  # a sell needs no buying power


async def test_buying_power_follows_fills_and_releases(world: RiskWorld) -> None:
    await world.limits.set_limits("u1", max_concentration=Decimal(1))
    first = await world.place("A1", "AAPL", BUY, "1000", "100")  # reserves everything
    await rejected("risk.buying_power", world.place("A1", "MSFT", BUY, "1", "100"))
    await world.fill(first, "400", "90")  # pays 36,000; frees at most that much
    snapshot = await world.exposure.snapshot("A1")
    assert snapshot.cash_flow_units == -36_000 * 10**4
    assert snapshot.reserved_units == 64_000 * 10**4
    assert await world.engine.release(first.order_id) is True
    # 100,000 - 36,000 = 64,000 of cash left, nothing reserved
    await world.place("A1", "MSFT", BUY, "640", "100")
    await rejected("risk.buying_power", world.place("A1", "TSLA", BUY, "1", "100"))


async def test_max_open_orders_counts_until_release(world: RiskWorld) -> None:
    await world.limits.set_limits("u1", max_open_orders=2)
    first = await world.place("A1", "AAPL", BUY, "1", "100")
    await world.place("A1", "AAPL", BUY, "1", "100")
    await rejected("risk.max_open_orders", world.place("A1", "AAPL", BUY, "1", "100"))
    await world.engine.release(first.order_id)
    await world.place("A1", "AAPL", BUY, "1", "100")


async def test_a_fully_filled_order_no_longer_counts_as_open(world: RiskWorld) -> None:
    await world.limits.set_limits("u1", max_open_orders=1)
    order = await world.place("A1", "AAPL", BUY, "5", "100")
    await world.fill(order, "2", "100")
    await rejected("risk.max_open_orders", world.place("A1", "AAPL", BUY, "1", "100"))
    await world.fill(order, "3", "99")
    await world.place("A1", "AAPL", BUY, "1", "100")


async def test_concentration_caps_one_name_at_a_fifth_of_equity(world: RiskWorld) -> None:
    await world.place("A1", "AAPL", BUY, "200", "100")  # 20,000 of 100,000 equity
    await rejected("risk.concentration", world.place("A1", "AAPL", BUY, "1", "100"))
    await world.place("A1", "MSFT", BUY, "200", "100")  # another name has its own room


async def test_concentration_counts_the_position_and_values_it_at_the_mark(
    world: RiskWorld,
) -> None:
    order = await world.place("A1", "AAPL", BUY, "150", "100")
    await world.fill(order, "150", "100")
    await world.quote("AAPL", last="120", bid="119.99", ask="120.01")
    # equity 100,000 + 150 x 20 = 103,000; cap 20,600 = 171.66 shares at 120
    await world.place("A1", "AAPL", BUY, "21", "120")
    await rejected("risk.concentration", world.place("A1", "AAPL", BUY, "1", "120"))


async def test_concentration_bounds_shorts_too(world: RiskWorld) -> None:
    await world.place("A1", "TSLA", SELL, "200", "100")
    await rejected("risk.concentration", world.place("A1", "TSLA", SELL, "1", "100"))


async def test_an_account_with_zero_equity_cannot_add_exposure(
    monotonic: ManualMonotonic,
) -> None:
    """No division by zero: with zero equity the cap on every name is 0."""
    world = RiskWorld(MemoryCache(clock=monotonic))
    world.accounts.add("Z", "u2", "0")
    await world.quote("TSLA", last="100")
    await rejected("risk.concentration", world.place("Z", "TSLA", SELL, "1", "100"))
    await rejected("risk.buying_power", world.place("Z", "TSLA", BUY, "1", "100"))


async def test_an_account_with_negative_equity_can_reduce_but_never_add(
    monotonic: ManualMonotonic,
) -> None:
    world = RiskWorld(MemoryCache(clock=monotonic))
    world.accounts.add("N", "u3", "1000")
    await world.limits.set_limits("u3", max_concentration=Decimal(1))
    await world.quote("AAPL", last="100")
    await world.quote("MSFT", last="1")
    short = await world.place("N", "AAPL", SELL, "10", "100")
    await world.fill(short, "10", "100")  # cash 2,000, short 10
    await world.quote("AAPL", last="300")  # equity 2,000 - 3,000 = -1,000
    await rejected("risk.concentration", world.place("N", "MSFT", BUY, "1", "1"))
    await rejected("risk.concentration", world.place("N", "MSFT", SELL, "1", "1"))
    # buying more than covers the short is refused; covering it is allowed
    await rejected("risk.concentration", world.place("N", "AAPL", BUY, "11", "100"))
    await world.place("N", "AAPL", BUY, "10", "200")


async def test_a_short_without_a_current_price_refuses_orders(
    world: RiskWorld, monotonic: ManualMonotonic
) -> None:
    short = await world.place("A1", "TSLA", SELL, "10", "100")
    await world.fill(short, "10", "100")
    monotonic.now += 6  # every price goes stale
    await world.quote("AAPL", last="100")
    error = await rejected("risk.no_price", world.place("A1", "AAPL", BUY, "1", "100"))
    assert "TSLA" in error.message


async def test_a_long_without_a_current_price_counts_as_nothing(
    world: RiskWorld, monotonic: ManualMonotonic
) -> None:
    long = await world.place("A1", "TSLA", BUY, "200", "100")
    await world.fill(long, "200", "100")  # cash 80,000 + TSLA 20,000
    monotonic.now += 6
    await world.quote("AAPL", last="100")
    # equity without TSLA: 80,000; 20% = 16,000 = 160 shares
    await world.place("A1", "AAPL", BUY, "160", "100")
    await rejected("risk.concentration", world.place("A1", "AAPL", BUY, "1", "100"))


async def test_reduce_only_lets_through_only_what_shrinks_a_position(world: RiskWorld) -> None:
    bought = await world.place("A1", "AAPL", BUY, "100", "100")
    await world.fill(bought, "100", "100")
    await world.limits.set_trading_state("u1", TradingState.REDUCE_ONLY)
    await rejected("risk.reduce_only", world.place("A1", "AAPL", BUY, "1", "100"))
    await rejected("risk.reduce_only", world.place("A1", "MSFT", SELL, "1", "100"))
    await world.place("A1", "AAPL", SELL, "60", "100")
    # with 60 already being sold, only 40 more can be
    await rejected("risk.reduce_only", world.place("A1", "AAPL", SELL, "41", "100"))
    await world.place("A1", "AAPL", SELL, "40", "100")


async def test_a_platform_wide_reduce_only_applies_to_every_user(world: RiskWorld) -> None:
    await world.limits.set_trading_state(PLATFORM, TradingState.REDUCE_ONLY)
    await rejected("risk.reduce_only", world.place("A1", "AAPL", BUY, "1", "100"))


@pytest.mark.parametrize("scope", ["user", "platform"])
async def test_the_kill_switch_halts_everything_until_lifted(world: RiskWorld, scope: str) -> None:
    target = "u1" if scope == "user" else PLATFORM
    await world.limits.set_trading_state(target, TradingState.HALTED)
    await rejected("risk.halted", world.place("A1", "AAPL", BUY, "1", "100"))
    await rejected("risk.halted", world.place("A1", "AAPL", SELL, "1", "100"))
    await world.limits.set_trading_state(target, TradingState.ACTIVE)
    await world.place("A1", "AAPL", BUY, "1", "100")


async def test_the_stricter_of_user_and_platform_state_wins(world: RiskWorld) -> None:
    await world.limits.set_trading_state("u1", TradingState.HALTED)
    await world.limits.set_trading_state(PLATFORM, TradingState.REDUCE_ONLY)
    await rejected("risk.halted", world.place("A1", "AAPL", SELL, "1", "100"))
    assert await world.limits.trading_state("u1") is TradingState.HALTED


async def test_order_rate_is_a_sliding_window_per_user(
    world: RiskWorld, monotonic: ManualMonotonic
) -> None:
    await world.limits.set_limits("u1", order_rate=3, order_rate_window=1.0)
    for _ in range(3):
        await world.place("A1", "AAPL", BUY, "1", "100")
    error = await rejected("risk.order_rate", world.place("A1", "AAPL", BUY, "1", "100"))
    assert "3 orders" in error.message
    monotonic.now += 1.0
    await world.quote("AAPL", last="100")
    await world.place("A1", "AAPL", BUY, "1", "100")


async def test_what_counts_toward_the_order_rate(world: RiskWorld) -> None:
    """Counted: admitted by the window, even if a later bound then refuses. Not counted:
    refused before the window (halted, notional, reduce-only), by it, or a repeated check."""
    await world.limits.set_limits("u1", order_rate=2, max_order_notional=Decimal(150_000))
    await rejected("risk.max_order_notional", world.place("A1", "AAPL", BUY, "1501", "100"))
    await world.limits.set_trading_state("u1", TradingState.HALTED)
    await rejected("risk.halted", world.place("A1", "AAPL", BUY, "1", "100"))
    await world.limits.set_trading_state("u1", TradingState.REDUCE_ONLY)
    await rejected("risk.reduce_only", world.place("A1", "AAPL", BUY, "1", "100"))
    await world.limits.set_trading_state("u1", TradingState.ACTIVE)
    # the window admits it, buying power refuses it: it counts (1 of 2)
    await rejected("risk.buying_power", world.place("A1", "AAPL", BUY, "1001", "100"))
    first = await world.place("A1", "AAPL", BUY, "1", "100", order_id="o-1")  # 2 of 2
    again = await world.place("A1", "AAPL", BUY, "1", "100", order_id="o-1")
    assert again.repeated, "a repeated check is answered, not refused by the rate"
    assert again.order_id == first.order_id
    error = await rejected("risk.order_rate", world.place("A1", "AAPL", BUY, "1", "100"))
    assert "retry in 1.000 s" in error.message, error.message


async def test_a_bound_before_the_rate_wins_over_it(world: RiskWorld) -> None:
    """Rules run in order: reduce-only (the trading state rule) comes before the rate."""
    await world.limits.set_limits("u1", order_rate=1)
    bought = await world.place("A1", "AAPL", BUY, "10", "100")  # the window is full
    await world.fill(bought, "10", "100")
    await world.limits.set_trading_state("u1", TradingState.REDUCE_ONLY)
    await rejected("risk.reduce_only", world.place("A1", "AAPL", BUY, "1", "100"))
    await rejected("risk.order_rate", world.place("A1", "AAPL", SELL, "1", "100"))


async def test_the_first_failing_rule_names_the_rejection(world: RiskWorld) -> None:
    await world.limits.set_limits("u1", max_open_orders=0, max_order_notional=Decimal(10))
    await rejected("risk.max_order_notional", world.place("A1", "AAPL", BUY, "1", "100"))
    await rejected("risk.max_open_orders", world.place("A1", "AAPL", BUY, "0.01", "100"))
    assert (await world.exposure.snapshot("A1")).open_orders == 0


async def test_only_the_owner_trades_an_account(world: RiskWorld) -> None:
    await rejected("risk.account_not_owned", world.place("A1", "AAPL", BUY, "1", user_id="u9"))
    await world.place("A1", "AAPL", BUY, "1", user_id="u1")


async def test_unknown_account_and_symbol(world: RiskWorld) -> None:
    await rejected("risk.unknown_account", world.place("NOPE", "AAPL", BUY, "1"))
    await rejected("risk.unknown_symbol", world.place("A1", "GME", BUY, "1"))


async def test_a_missing_or_stale_price_fails_closed(
    world: RiskWorld, monotonic: ManualMonotonic
) -> None:
    await world.quote("AAPL", last=None, bid="99", ask=None)
    await rejected("risk.no_price", world.place("A1", "AAPL", BUY, "1"))  # no ask, no last
    monotonic.now += 5.0  # the 5 s TTL passes
    await rejected("risk.no_price", world.place("A1", "MSFT", BUY, "1", "100"))
    assert (await world.exposure.snapshot("A1")).open_orders == 0
    assert outcomes(world.latencies) == ["risk.no_price", "risk.no_price"]


class BrokenCache(MemoryCache):
    """A cache whose every operation fails after ``broken`` is set."""

    broken = False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.broken:
            raise ConnectionError("cache unreachable")
        return await super().get_many(keys)

    async def run_script(
        self, script: CacheScript, keys: Sequence[str], args: Sequence[str]
    ) -> object:
        if self.broken:
            raise ConnectionError("cache unreachable")
        return await super().run_script(script, keys, args)


async def test_an_unreachable_cache_fails_closed(monotonic: ManualMonotonic) -> None:
    cache = BrokenCache(clock=monotonic)
    world = RiskWorld(cache)
    world.accounts.add("A1", "u1", "1000")
    await world.quote("AAPL")
    order = await world.place("A1", "AAPL", BUY, "1", "100")
    cache.broken = True
    await rejected("risk.unavailable", world.place("A1", "AAPL", BUY, "1", "100"))
    await rejected("risk.unavailable", world.engine.release(order.order_id))


async def test_an_unreachable_account_store_fails_closed(world: RiskWorld) -> None:
    world.accounts.add("A2", "u1", "1000")
    world.accounts.fail = True
    await rejected("risk.unavailable", world.place("A2", "AAPL", BUY, "1", "100"))


async def test_checking_the_same_order_id_twice_reserves_once(world: RiskWorld) -> None:
    first = await world.place("A1", "AAPL", BUY, "10", "100", order_id="o-1")
    again = await world.place("A1", "AAPL", BUY, "10", "100", order_id="o-1")
    assert (first.repeated, again.repeated) == (False, True)
    snapshot = await world.exposure.snapshot("A1")
    assert (snapshot.open_orders, snapshot.reserved_units) == (1, 1000 * 10**4)


async def test_release_is_idempotent(world: RiskWorld) -> None:
    order = await world.place("A1", "AAPL", BUY, "10", "100")
    assert await world.engine.release(order.order_id) is True
    assert await world.engine.release(order.order_id) is False
    assert await world.engine.release("never-reserved") is False
    snapshot = await world.exposure.snapshot("A1")
    assert (snapshot.open_orders, snapshot.reserved_units) == (0, 0)


async def test_a_fill_is_booked_once_whatever_the_redelivery(world: RiskWorld) -> None:
    order = await world.place("A1", "AAPL", BUY, "10", "100")
    assert await world.fill(order, "4", "100", fill_id="f1") is True
    assert await world.fill(order, "6", "100", fill_id="f2") is True
    assert await world.fill(order, "4", "100", fill_id="f1") is False  # an older one again
    snapshot = await world.exposure.snapshot("A1")
    assert snapshot.positions == {"AAPL": Decimal(10)}
    assert snapshot.cash_flow_units == -1000 * 10**4
    assert (snapshot.open_orders, snapshot.reserved_units) == (0, 0)

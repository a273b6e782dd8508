"""``/api/market`` on the embedded platform: the instruments, last quotes (null unless fresh)
and candles built from the prices the market-data consumer takes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from tests.helpers import eventually_equals
from tests.unit.web.trading_world import Trader, TradingWorld, error_code, trading_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[TradingWorld]:
    async with trading_world(tmp_path) as made:
        yield made


@pytest.fixture
async def alice(world: TradingWorld) -> Trader:
    return await world.trader("alice")


async def test_the_symbols_are_every_instrument_with_its_grid(
    world: TradingWorld, alice: Trader
) -> None:
    response = await alice.call("GET", "/api/market/symbols")

    assert response.status_code == 200
    symbols = response.json()["symbols"]
    assert [s["symbol"] for s in symbols] == sorted(world.platform.instruments)
    aapl = next(s for s in symbols if s["symbol"] == "AAPL")
    assert aapl == {
        "symbol": "AAPL",
        "tick_size": "0.01",
        "lot_size": "1",
        "reference_price": "187.20",
        "venue": "SIMX",
    }


async def test_a_quote_is_null_until_a_fresh_price_arrives(
    world: TradingWorld, alice: Trader
) -> None:
    before = await alice.call("GET", "/api/market/quotes?symbols=AAPL,msft")
    assert before.json() == {"quotes": {"AAPL": None, "MSFT": None}}

    await world.quote("MSFT", "415.40", "415.50", age=timedelta(seconds=30))
    await world.quote("AAPL", "187.20", "187.25", last="187.22")
    after = (await alice.call("GET", "/api/market/quotes?symbols=AAPL, msft,AAPL")).json()

    assert after["quotes"]["MSFT"] is None  # too old to be served
    quote = after["quotes"]["AAPL"]
    assert {k: quote[k] for k in ("symbol", "bid", "ask", "last", "venue")} == {
        "symbol": "AAPL",
        "bid": "187.20",
        "ask": "187.25",
        "last": "187.22",
        "venue": "TEST",
    }
    assert quote["time"].endswith("Z")
    assert list(after["quotes"]) == ["AAPL", "MSFT"]


async def test_candles_are_built_from_the_prices_taken(world: TradingWorld, alice: Trader) -> None:
    await world.quote("AAPL", "187.20", "187.25", last="187.22")
    await world.quote("AAPL", "187.30", "187.35", last="187.31")

    async def one_minute_bar() -> list[tuple[str, str, int]]:
        response = await alice.call("GET", "/api/market/candles/aapl?interval=1m")
        return [(c["open"], c["close"], c["trades"]) for c in response.json()["candles"]]

    await eventually_equals(one_minute_bar, [("187.22", "187.31", 2)], what="the 1m bar is saved")
    hourly = (await alice.call("GET", "/api/market/candles/AAPL?interval=1h&limit=1")).json()
    assert hourly["symbol"] == "AAPL"
    assert hourly["interval"] == "1h"
    [bar] = hourly["candles"]
    assert (bar["high"], bar["low"], bar["volume"]) == ("187.31", "187.22", "200")
    assert bar["start"].endswith(":00:00Z")

    later = "start=2999-01-01T00:00:00%2B05:00"
    assert (await alice.call("GET", f"/api/market/candles/AAPL?{later}")).json()["candles"] == []
    earlier = "end=2000-01-01T00:00:00-05:00"
    assert (await alice.call("GET", f"/api/market/candles/AAPL?{earlier}")).json()["candles"] == []
    assert (await alice.call("GET", "/api/market/candles/MSFT")).json()["candles"] == []


async def test_market_data_needs_a_login(world: TradingWorld) -> None:
    async with world.anonymous() as anonymous:
        for path in ("symbols", "quotes?symbols=AAPL", "candles/AAPL"):
            response = await anonymous.get(f"/api/market/{path}")
            assert (response.status_code, error_code(response)) == (401, "not_authenticated")


# --- refusals: a 422 with a machine-readable code; they share one world -----------------------


@pytest_asyncio.fixture(loop_scope="class", scope="class")
async def reader(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trader]:
    async with trading_world(tmp_path_factory.mktemp("market")) as world:
        yield await world.trader("alice")


@pytest.mark.asyncio(loop_scope="class")
class TestRefusals:
    @pytest.mark.parametrize(
        ("query", "code"),
        [
            ("", "validation_failed"),
            ("symbols=", "validation_failed"),
            ("symbols=,,", "invalid_symbols"),
            ("symbols=AAPL,NOPE", "unknown_symbol"),
            ("symbols=" + ",".join(f"S{n}" for n in range(101)), "invalid_symbols"),
            ("symbols=" + "A" * 2001, "validation_failed"),
        ],
    )
    async def test_a_bad_quotes_query_is_a_422_with_a_code(
        self, reader: Trader, query: str, code: str
    ) -> None:
        response = await reader.call("GET", f"/api/market/quotes?{query}")

        assert (response.status_code, error_code(response)) == (422, code), response.text

    @pytest.mark.parametrize(
        ("query", "code"),
        [
            ("NOPE", "unknown_symbol"),
            ("AAPL?interval=2m", "validation_failed"),
            ("AAPL?limit=0", "validation_failed"),
            ("AAPL?limit=5001", "validation_failed"),
            ("AAPL?start=2025-01-01T00:00:00", "invalid_time"),
            ("AAPL?end=2025-01-01", "invalid_time"),
            ("AAPL?start=yesterday", "validation_failed"),
            ("AAPL?start=0001-01-01T00:00:00%2B01:00", "invalid_time"),
            ("AAPL?end=9999-12-31T23:59:59-01:00", "invalid_time"),
            ("A" * 33, "validation_failed"),
        ],
    )
    async def test_a_bad_candles_query_is_a_422_with_a_code(
        self, reader: Trader, query: str, code: str
    ) -> None:
        response = await reader.call("GET", f"/api/market/candles/{query}")

        assert (response.status_code, error_code(response)) == (422, code), response.text

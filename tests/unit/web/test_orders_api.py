"""``/api/orders`` on the embedded platform: place (202, replay 200), list with cursors, read,
cancel, amend; every refusal a 4xx in the error model with nothing persisted; and each user
reaching only their own orders."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.helpers import eventually_equals
from tests.unit.web.trading_world import Trader, TradingWorld, error_code, trading_world
from tradeloom.web.errors import ApiError


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[TradingWorld]:
    async with trading_world(tmp_path) as made:
        await made.quote("AAPL", "187.20", "187.25")
        yield made


@pytest.fixture
async def alice(world: TradingWorld) -> Trader:
    return await world.trader("alice")


@pytest.fixture
async def bob(world: TradingWorld) -> Trader:
    return await world.trader("bob")


VALID = {"symbol": "AAPL", "side": "buy", "qty": "10", "type": "limit", "limit_price": "180.00"}


async def listed(trader: Trader, query: str = "") -> list[str]:
    response = await trader.call("GET", f"/api/orders{query}")
    assert response.status_code == 200, response.text
    return [item["order_id"] for item in response.json()["items"]]


# --- placing ---------------------------------------------------------------------------------


async def test_a_limit_order_is_acknowledged_pending_new_then_listed(alice: Trader) -> None:
    response = await alice.place(client_order_id="mine-1")

    assert response.status_code == 202, response.text
    receipt = response.json()
    assert receipt["status"] == "pending_new"
    assert receipt["client_order_id"] == "mine-1"
    assert response.headers["X-Correlation-ID"] == receipt["correlation_id"]
    order = await alice.settles(receipt["order_id"], status="accepted")
    assert order["symbol"] == "AAPL"
    assert (order["qty"], order["limit_price"], order["filled_qty"]) == ("10", "180.00", "0")
    assert order["correlation_id"] == receipt["correlation_id"]
    assert order["submitted_at"].endswith("Z")
    assert await listed(alice) == [receipt["order_id"]]


async def test_a_repeated_client_order_id_answers_200_with_the_original_and_places_nothing(
    world: TradingWorld, alice: Trader
) -> None:
    first = await alice.place(client_order_id="twice")
    again = await alice.place(client_order_id="twice", qty="99")

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["order_id"] == first.json()["order_id"]
    assert again.json()["correlation_id"] == first.json()["correlation_id"]
    assert await world.stored() == (1, 1)


async def test_a_market_order_fills_at_the_ask(alice: Trader) -> None:
    response = await alice.place(type="market", limit_price=None, time_in_force="day")

    assert response.status_code == 202, response.text
    order = await alice.settles(response.json()["order_id"], status="filled", filled_qty="10")
    assert order["average_fill_price"] == "187.25"
    assert order["remaining_qty"] == "0"
    assert order["is_open"] is False


async def test_an_order_placed_with_an_api_token_needs_no_csrf(
    world: TradingWorld, alice: Trader
) -> None:
    token = (await alice.call("POST", "/api/auth/tokens", {"name": "bot"})).json()["token"]
    async with world.anonymous() as bot:
        body = {"symbol": "AAPL", "side": "sell", "qty": "1", "type": "market"}
        response = await bot.post(
            "/api/orders", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 202, response.text


async def test_symbols_are_case_insensitive_and_amounts_come_back_in_plain_notation(
    alice: Trader,
) -> None:
    response = await alice.place(symbol="aapl", qty="1E+1", limit_price="1.8E+2")

    assert response.status_code == 202, response.text
    order = await alice.settles(response.json()["order_id"], status="accepted")
    assert (order["symbol"], order["qty"], order["limit_price"]) == ("AAPL", "10", "180")


# --- cancel and amend -------------------------------------------------------------------------


async def test_a_resting_order_is_amended_then_canceled(alice: Trader) -> None:
    order_id = (await alice.place()).json()["order_id"]
    await alice.settles(order_id, status="accepted")

    amended = await alice.call("PATCH", f"/api/orders/{order_id}", {"limit_price": "179.50"})
    assert amended.status_code == 202, amended.text
    assert amended.json()["status"] == "pending_replace"
    await alice.settles(order_id, status="accepted", limit_price="179.50")

    smaller = await alice.call("PATCH", f"/api/orders/{order_id}", {"qty": "4"})
    assert smaller.status_code == 202, smaller.text
    await alice.settles(order_id, status="accepted", qty="4")

    canceled = await alice.call("DELETE", f"/api/orders/{order_id}")
    assert canceled.status_code == 202, canceled.text
    assert canceled.json()["status"] == "pending_cancel"
    await alice.settles(order_id, status="canceled", is_open=False)

    history = await alice.call("GET", f"/api/orders/{order_id}/history")
    types = [event["type"] for event in history.json()["events"]]
    assert types[0] == "order.submitted"
    assert types[-1] == "order.canceled"
    assert types.count("order.replaced") == 2


async def test_a_finished_order_cannot_be_canceled_or_amended(
    world: TradingWorld, alice: Trader
) -> None:
    response = await alice.place(type="market", limit_price=None, time_in_force="day")
    order_id = response.json()["order_id"]
    await alice.settles(order_id, status="filled")
    before = await world.stored()

    cancel = await alice.call("DELETE", f"/api/orders/{order_id}")
    amend = await alice.call("PATCH", f"/api/orders/{order_id}", {"qty": "1"})

    assert (cancel.status_code, error_code(cancel)) == (409, "order_not_open")
    assert (amend.status_code, error_code(amend)) == (409, "order_not_open")
    assert await world.stored() == before


# --- isolation --------------------------------------------------------------------------------


async def test_another_users_order_is_not_found_by_any_route(
    world: TradingWorld, alice: Trader, bob: Trader
) -> None:
    order_id = (await alice.place()).json()["order_id"]
    await alice.settles(order_id, status="accepted")
    before = await world.stored()

    for method, path, body in [
        ("GET", f"/api/orders/{order_id}", None),
        ("GET", f"/api/orders/{order_id}/history", None),
        ("DELETE", f"/api/orders/{order_id}", None),
        ("PATCH", f"/api/orders/{order_id}", {"qty": "1"}),
    ]:
        response = await bob.call(method, path, body)
        assert (response.status_code, error_code(response)) == (404, "order_not_found"), path

    assert await listed(bob) == []
    assert await listed(bob, f"?account_id={(await alice.order(order_id))['account_id']}") == []
    assert await world.stored() == before
    assert (await alice.order(order_id))["status"] == "accepted"


async def test_an_order_in_another_users_account_is_refused(
    world: TradingWorld, alice: Trader, bob: Trader
) -> None:
    alices_account = (await alice.call("GET", "/api/auth/me")).json()["accounts"][0]
    response = await bob.place(account_id=alices_account["account_id"])

    assert (response.status_code, error_code(response)) == (404, "account_not_found")
    assert await world.stored() == (0, 0)


async def test_an_unknown_order_id_is_not_found(alice: Trader) -> None:
    for method in ("GET", "DELETE"):
        response = await alice.call(method, "/api/orders/0190a1b2-0000-7000-8000-000000000000")
        assert (response.status_code, error_code(response)) == (404, "order_not_found")


async def test_placing_needs_a_login_and_the_csrf_header(
    world: TradingWorld, alice: Trader
) -> None:
    without_csrf = await alice.client.post("/api/orders", json=VALID)
    async with world.anonymous() as anonymous:
        without_login = await anonymous.post("/api/orders", json=VALID)

    assert (without_csrf.status_code, error_code(without_csrf)) == (403, "csrf_failed")
    assert (without_login.status_code, error_code(without_login)) == (401, "not_authenticated")
    assert await world.stored() == (0, 0)


# --- listing ----------------------------------------------------------------------------------


async def test_orders_come_newest_first_a_page_at_a_time(
    world: TradingWorld, alice: Trader
) -> None:
    placed = [(await alice.place(qty=str(n))).json()["order_id"] for n in range(1, 6)]
    await eventually_equals(world.projected, 5, what="five orders are projected")

    pages: list[list[str]] = []
    cursor = ""
    while True:
        response = await alice.call("GET", f"/api/orders?limit=2{cursor}")
        page = response.json()
        pages.append([item["order_id"] for item in page["items"]])
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [order_id for page in pages for order_id in page] == placed[::-1]


async def test_orders_are_filtered_by_status_and_symbol(world: TradingWorld, alice: Trader) -> None:
    await world.quote("MSFT", "415.40", "415.50")
    resting = (await alice.place()).json()["order_id"]
    filled = (await alice.place(type="market", limit_price=None, time_in_force="day")).json()
    other = (await alice.place(symbol="MSFT", limit_price="400.00")).json()["order_id"]
    await alice.settles(filled["order_id"], status="filled")
    await alice.settles(other, status="accepted")

    assert await listed(alice, "?status=open") == [other, resting]
    assert await listed(alice, "?status=closed") == [filled["order_id"]]
    assert await listed(alice, "?symbol=msft") == [other]
    assert await listed(alice, "?symbol=AAPL&status=open") == [resting]
    assert len(await listed(alice, "?since=2000-01-01T00:00:00%2B05:00")) == 3
    assert await listed(alice, "?until=2000-01-01T00:00:00Z") == []


async def test_the_api_documents_orders_with_examples_and_the_error_model(
    world: TradingWorld,
) -> None:
    spec = world.app.openapi()
    place = spec["paths"]["/api/orders"]["post"]

    assert set(place["responses"]) >= {"200", "202", "400", "401", "404", "422", "429"}
    error = place["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    body = spec["components"]["schemas"]["PlaceOrderBody"]
    assert body["examples"][0]["symbol"] == "AAPL"
    assert "pattern" in body["properties"]["qty"]["anyOf"][0]


# --- refusals: a 4xx in the error model with a machine-readable code, nothing persisted -------
# They change nothing, so they share one world (one resting order to amend).


def forged_cursor(moment: str, order_id: object) -> str:
    raw = json.dumps([moment, order_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class Shared:
    world: TradingWorld
    alice: Trader
    resting: str


@pytest_asyncio.fixture(loop_scope="class", scope="class")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    async with trading_world(tmp_path_factory.mktemp("refusals")) as world:
        await world.quote("AAPL", "187.20", "187.25")
        alice = await world.trader("alice")
        resting = (await alice.place()).json()["order_id"]
        await alice.settles(resting, status="accepted")
        yield Shared(world, alice, resting)


@pytest.mark.asyncio(loop_scope="class")
class TestRefusals:
    @pytest.mark.parametrize(
        ("change", "status", "code"),
        [
            ({"symbol": "NOPE"}, 422, "unknown_symbol"),
            ({"symbol": ""}, 422, "validation_failed"),
            ({"symbol": "A" * 33}, 422, "validation_failed"),
            ({"symbol": "AA\u0000PL"}, 422, "validation_failed"),
            ({"symbol": 42}, 422, "validation_failed"),
            ({"side": "hold"}, 422, "validation_failed"),
            ({"type": "twap"}, 422, "validation_failed"),
            ({"time_in_force": "gtd"}, 422, "validation_failed"),
            ({"qty": "0"}, 422, "invalid_quantity"),
            ({"qty": "-10"}, 422, "invalid_quantity"),
            ({"qty": "-0"}, 422, "invalid_quantity"),
            ({"qty": 0}, 422, "invalid_quantity"),
            ({"qty": "1.5"}, 422, "invalid_quantity"),
            ({"qty": "10000000000"}, 422, "invalid_quantity"),
            ({"qty": 10**30}, 422, "validation_failed"),
            ({"qty": "1e999999"}, 422, "validation_failed"),
            ({"qty": "1e-999999"}, 422, "validation_failed"),
            ({"qty": "NaN"}, 422, "validation_failed"),
            ({"qty": "sNaN"}, 422, "validation_failed"),
            ({"qty": "Infinity"}, 422, "validation_failed"),
            ({"qty": "-Infinity"}, 422, "validation_failed"),
            ({"qty": "ten"}, 422, "validation_failed"),
            ({"qty": " 10"}, 422, "validation_failed"),
            ({"qty": "1_000"}, 422, "validation_failed"),
            ({"qty": "1" * 41}, 422, "validation_failed"),
            ({"qty": 10.0}, 422, "validation_failed"),
            ({"qty": True}, 422, "validation_failed"),
            ({"qty": None}, 422, "validation_failed"),
            ({"qty": ["10"]}, 422, "validation_failed"),
            ({"limit_price": "1e30"}, 422, "validation_failed"),
            ({"limit_price": "999999999999"}, 422, "invalid_price"),
            ({"limit_price": "1000000000000"}, 422, "validation_failed"),
            ({"limit_price": "180.001"}, 422, "invalid_price"),
            ({"limit_price": "-180"}, 422, "invalid_price"),
            ({"limit_price": None}, 422, "invalid_limit_price"),
            ({"type": "market"}, 422, "invalid_limit_price"),
            (
                {"type": "stop", "limit_price": None, "stop_price": "190", "time_in_force": "ioc"},
                422,
                "invalid_time_in_force",
            ),
            (
                {"type": "market", "limit_price": None, "time_in_force": "gtc"},
                422,
                "invalid_time_in_force",
            ),
            ({"client_order_id": "has space"}, 422, "validation_failed"),
            ({"client_order_id": "c" * 65}, 422, "validation_failed"),
            ({"account_id": "no/such"}, 422, "validation_failed"),
            ({"account_id": "nosuch"}, 404, "account_not_found"),
            ({"leverage": "10"}, 422, "validation_failed"),
            ({"qty": "1000", "limit_price": "187.00"}, 422, "risk.buying_power"),
        ],
    )
    async def test_a_refused_order_is_a_4xx_with_a_code_and_nothing_is_persisted(
        self, shared: Shared, change: dict[str, Any], status: int, code: str
    ) -> None:
        await shared.world.quote("AAPL", "187.20", "187.25")  # fresh, so risk decides
        before = await shared.world.stored()

        response = await shared.alice.call("POST", "/api/orders", VALID | change)

        assert (response.status_code, error_code(response)) == (status, code), response.text
        assert await shared.world.stored() == before

    @pytest.mark.parametrize(
        ("content", "content_type", "status", "code"),
        [
            (b'{"symbol": "AAPL", "side": ', "application/json", 400, "malformed_json"),
            (b"", "application/json", 422, "validation_failed"),
            (b"null", "application/json", 422, "validation_failed"),
            (b"[]", "application/json", 422, "validation_failed"),
            (b'"AAPL"', "application/json", 422, "validation_failed"),
            (b'{"qty": NaN}', "application/json", 422, "validation_failed"),
            (b'{"qty": Infinity}', "application/json", 422, "validation_failed"),
            (b'{"qty": 1e999999}', "application/json", 422, "validation_failed"),
            (
                b"symbol=AAPL&side=buy",
                "application/x-www-form-urlencoded",
                415,
                "unsupported_media_type",
            ),
        ],
    )
    async def test_a_body_that_is_not_an_order_is_refused(
        self, shared: Shared, content: bytes, content_type: str, status: int, code: str
    ) -> None:
        before = await shared.world.stored()

        response = await shared.alice.client.post(
            "/api/orders",
            content=content,
            headers={"Content-Type": content_type, "X-CSRF-Token": shared.alice.csrf},
        )

        assert (response.status_code, error_code(response)) == (status, code), response.text
        assert await shared.world.stored() == before

    @pytest.mark.parametrize(
        ("body", "status", "code"),
        [
            ({}, 422, "validation_failed"),
            ({"qty": None, "limit_price": None}, 422, "validation_failed"),
            ({"qty": "11"}, 422, "amend_adds_exposure"),
            ({"limit_price": "181.00"}, 422, "amend_adds_exposure"),
            ({"qty": "0"}, 422, "invalid_quantity"),
            ({"qty": "-1"}, 422, "invalid_quantity"),
            ({"limit_price": "0"}, 422, "invalid_price"),
            ({"limit_price": "179.001"}, 422, "invalid_price"),
            ({"stop_price": "170.00"}, 422, "invalid_stop_price"),
            ({"qty": "NaN"}, 422, "validation_failed"),
            ({"limit_price": "1e999999"}, 422, "validation_failed"),
            ({"qty": 2.5}, 422, "validation_failed"),
            ({"qty": "2", "side": "sell"}, 422, "validation_failed"),
        ],
    )
    async def test_a_refused_amend_changes_nothing(
        self, shared: Shared, body: dict[str, Any], status: int, code: str
    ) -> None:
        before = await shared.world.stored()

        response = await shared.alice.call("PATCH", f"/api/orders/{shared.resting}", body)

        assert (response.status_code, error_code(response)) == (status, code), response.text
        assert await shared.world.stored() == before
        assert (await shared.alice.order(shared.resting))["status"] == "accepted"

    @pytest.mark.parametrize("order_id", ["x" * 65, "a%00b", "semi;colon", "%C3%A9t%C3%A9"])
    async def test_a_malformed_order_id_is_refused_before_any_lookup(
        self, shared: Shared, order_id: str
    ) -> None:
        for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/history")]:
            response = await shared.alice.call(method, f"/api/orders/{order_id}{path}")
            assert (response.status_code, error_code(response)) == (422, "validation_failed")

    @pytest.mark.parametrize(
        ("query", "status", "code"),
        [
            ("status=pending", 422, "validation_failed"),
            ("limit=0", 422, "validation_failed"),
            ("limit=501", 422, "validation_failed"),
            ("limit=ten", 422, "validation_failed"),
            ("cursor=junk", 400, "invalid_cursor"),
            ("cursor=%00", 422, "validation_failed"),
            (f"cursor={'A' * 513}", 422, "validation_failed"),
            (f"cursor={forged_cursor('2025-01-01T00:00:00', 'x')}", 400, "invalid_cursor"),
            (f"cursor={forged_cursor('0001-01-01T00:00:00+01:00', 'x')}", 400, "invalid_cursor"),
            (f"cursor={forged_cursor('2025-01-01T00:00:00Z', 'a' * 65)}", 400, "invalid_cursor"),
            ("cursor=" + forged_cursor("2025-01-01T00:00:00Z", "nul\u0000"), 400, "invalid_cursor"),
            (f"cursor={forged_cursor('2025-01-01T00:00:00Z', 7)}", 400, "invalid_cursor"),
            ("since=2025-01-01T00:00:00", 422, "invalid_time"),
            ("since=tomorrow", 422, "validation_failed"),
            ("since=13", 422, "validation_failed"),  # not seconds since 1970: ISO only
            ("until=-5.27e-44", 422, "validation_failed"),
            ("since=0001-01-01T00:00:00%2B01:00", 422, "invalid_time"),
            ("until=9999-12-31T23:59:59-01:00", 422, "invalid_time"),
            ("since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", 422, "invalid_time"),
            ("symbol=", 422, "validation_failed"),
            ("symbol=AA%00PL", 422, "validation_failed"),
            ("account_id=a%00b", 422, "validation_failed"),
        ],
    )
    async def test_a_bad_listing_query_is_a_4xx_with_a_code(
        self, shared: Shared, query: str, status: int, code: str
    ) -> None:
        response = await shared.alice.call("GET", f"/api/orders?{query}")

        assert (response.status_code, error_code(response)) == (status, code), response.text

    async def test_an_account_id_of_another_shape_names_no_account(self, shared: Shared) -> None:
        trading = shared.world.app.state.trading
        for malformed in ("a\x00b", "a b", "x" * 65, "-leading"):
            with pytest.raises(ApiError) as refused:
                await trading.account_for("alice", malformed)
            assert (refused.value.status, refused.value.code) == (404, "account_not_found")

"""The order path end to end, on the embedded default and on PostgreSQL, Redis and NATS:
command handler → risk → outbox → bus → execution → paper broker → fill events → order state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.helpers import eventually_equals
from tradeloom.bootstrap import Platform, build_platform
from tradeloom.config import Settings
from tradeloom.domain.commands import AmendOrder, CancelOrder, PlaceOrder
from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import DeadLettered, Event, OrderSubmitted, PriceUpdate
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import Order, OrderStatus, OrderType, Side, TimeInForce
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.messaging.topics import DEAD_LETTER
from tradeloom.oms.repository import load_order
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.schema import orders, outbox


@dataclass
class Flow:
    platform: Platform
    account: str
    dead_letters: list[DeadLettered] = field(default_factory=list)

    async def quote(self, symbol: str, bid: str, ask: str, last: str | None = None) -> None:
        """Publish a price and wait until risk (the cache) sees it."""
        update = PriceUpdate(
            symbol=symbol,
            bid=Decimal(bid),
            ask=Decimal(ask),
            last=Decimal(last) if last else None,
            volume=Decimal(100) if last else Decimal(0),
            exchange_time=datetime.now(UTC),
            venue="TEST",
        )
        await self.platform.market_data.publisher.submit(update)

        async def cached_bid() -> Decimal | None:
            price = await self.platform.market_data.last_prices.last(symbol)
            return None if price is None else price.bid

        await eventually_equals(cached_bid, Decimal(bid))
        await self.platform.market_data.consumer.wait_until_consumed(
            self.platform.market_data.publisher.published
        )

    async def place(self, **terms: object) -> str:
        command = PlaceOrder(
            account_id=str(terms.pop("account_id", self.account)),
            client_order_id=str(terms.pop("client_order_id", new_id())),
            symbol=str(terms.pop("symbol", "AAPL")),
            side=Side(terms.pop("side", "buy")),
            order_type=OrderType(terms.pop("order_type", "market")),
            quantity=Decimal(str(terms.pop("quantity", "10"))),
            time_in_force=TimeInForce(terms.pop("time_in_force", "day")),
            correlation_id=new_id(),
            limit_price=Decimal(str(terms["limit_price"])) if "limit_price" in terms else None,
        )
        receipt = await self.platform.orders.place(command)
        assert receipt.status is OrderStatus.PENDING_NEW
        return receipt.order_id

    async def order(self, order_id: str) -> Order:
        async with self.platform.database.connect() as conn:
            found = await load_order(conn, order_id)
        assert found is not None, f"order {order_id} is not stored"
        return found

    async def status(self, order_id: str) -> tuple[OrderStatus, Decimal]:
        order = await self.order(order_id)
        return order.status, order.filled_quantity

    async def settle(self, order_id: str, status: OrderStatus, filled: str) -> None:
        await eventually_equals(lambda: self.status(order_id), (status, Decimal(filled)))

    async def stored_orders(self) -> int:
        query = select(func.count()).where(orders.c.account_id == self.account)
        async with self.platform.database.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def outbox_rows(self) -> int:
        """This account's outbox rows: on PostgreSQL the database is shared by the session's
        tests, whose rows (and whose reconciliation at start) are not this test's."""
        query = select(func.count()).where(outbox.c.key == self.account)
        async with self.platform.database.connect() as conn:
            return int(await conn.scalar(query) or 0)


def settings_for(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique: str
) -> Settings:
    if kind == "embedded":
        return Settings(database_url=f"sqlite:///{tmp_path}/flow.db", broker_timeout=2.0)
    return Settings(
        database_url=request.getfixturevalue("postgres_url"),
        bus_url=request.getfixturevalue("nats_url"),
        cache_url=request.getfixturevalue("redis_url"),
        namespace=f"of{unique}",
        broker_timeout=2.0,
    )


@pytest.fixture(params=["embedded", "production"])
async def flow(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> AsyncIterator[Flow]:
    settings = settings_for(request.param, tmp_path, request, unique)
    if request.param == "production":
        await upgrade_database(settings.database_url)
    platform = build_platform(settings)
    try:
        await platform.start()
        # Execution runs here (it holds the lock) and its reconciliation at start is done: no
        # retry runs in the background of the test (it would write rows of earlier tests').
        assert (platform.execution.active, platform.execution.reconciled) == (True, True)
    except BaseException:
        await platform.close()  # never leave the execution lock held for the next test
        raise
    made = Flow(platform, f"acc-{unique}")

    async def on_dead_letter(events: Sequence[Event]) -> None:
        made.dead_letters += [e.payload for e in events if isinstance(e.payload, DeadLettered)]

    await platform.bus.subscribe_batch(DEAD_LETTER.name, "test-dead-letters", on_dead_letter)
    await platform.accounts.create(made.account, "alice", Decimal(1_000_000))
    await made.quote("AAPL", "187.20", "187.25")
    yield made
    await platform.close()
    if request.param == "production":
        await delete_bus_streams(settings.bus_url, settings.namespace.upper())


async def test_a_market_order_is_accepted_and_filled_at_the_ask(flow: Flow) -> None:
    order_id = await flow.place(quantity=10)
    await flow.settle(order_id, OrderStatus.FILLED, "10")
    assert (await flow.order(order_id)).average_fill_price == Decimal("187.25")


async def test_a_large_order_fills_in_parts_against_the_displayed_size(flow: Flow) -> None:
    order_id = await flow.place(quantity=250)
    await flow.settle(order_id, OrderStatus.PARTIALLY_FILLED, "100")
    await flow.quote("AAPL", "187.20", "187.26")
    await flow.settle(order_id, OrderStatus.PARTIALLY_FILLED, "200")
    await flow.quote("AAPL", "187.20", "187.27")
    await flow.settle(order_id, OrderStatus.FILLED, "250")
    assert (await flow.order(order_id)).average_fill_price == Decimal("187.258")


async def test_a_resting_limit_order_can_be_amended_then_canceled(flow: Flow) -> None:
    order_id = await flow.place(order_type="limit", limit_price="180.00", time_in_force="gtc")
    await flow.settle(order_id, OrderStatus.ACCEPTED, "0")
    correlation = new_id()
    await flow.platform.orders.amend(
        AmendOrder(
            account_id=flow.account,
            order_id=order_id,
            correlation_id=correlation,
            limit_price=Decimal("179.00"),
        )
    )
    await eventually_equals(
        lambda: _limit(flow, order_id), (OrderStatus.ACCEPTED, Decimal("179.00"))
    )
    await flow.platform.orders.cancel(
        CancelOrder(account_id=flow.account, order_id=order_id, correlation_id=new_id())
    )
    await flow.settle(order_id, OrderStatus.CANCELED, "0")


async def _limit(flow: Flow, order_id: str) -> tuple[OrderStatus, Decimal | None]:
    order = await flow.order(order_id)
    return order.status, order.limit_price


async def test_a_limit_order_fills_when_the_price_crosses(flow: Flow) -> None:
    order_id = await flow.place(order_type="limit", limit_price="187.00")
    await flow.settle(order_id, OrderStatus.ACCEPTED, "0")
    await flow.quote("AAPL", "186.90", "186.95")
    await flow.settle(order_id, OrderStatus.FILLED, "10")
    assert (await flow.order(order_id)).average_fill_price == Decimal("186.95")


async def test_a_risk_rejection_persists_and_publishes_nothing(flow: Flow) -> None:
    with pytest.raises(DomainError) as refused:
        await flow.place(quantity=10_000)  # 1.87 M notional: above the 1 M per-order limit
    assert refused.value.code.startswith("risk.")
    assert await flow.stored_orders() == 0
    assert await flow.outbox_rows() == 0


async def test_an_unknown_symbol_is_refused_before_risk(flow: Flow) -> None:
    with pytest.raises(DomainError) as refused:
        await flow.place(symbol="NOPE")
    assert refused.value.code == "unknown_symbol"
    assert await flow.stored_orders() == 0


async def test_a_broker_rejection_reaches_the_order(flow: Flow) -> None:
    flow.platform.broker.halt("AAPL")
    order_id = await flow.place()
    await flow.settle(order_id, OrderStatus.REJECTED, "0")
    assert "instrument_halted" in ((await flow.order(order_id)).reason or "")


async def test_repeating_a_client_order_id_returns_the_original(flow: Flow) -> None:
    first = await flow.place(client_order_id="my-order-1")
    again = await flow.platform.orders.place(
        PlaceOrder(
            account_id=flow.account,
            client_order_id="my-order-1",
            symbol="AAPL",
            side=Side.BUY,
            order_type=OrderType.MARKET,
            quantity=Decimal(10),
            time_in_force=TimeInForce.DAY,
            correlation_id=new_id(),
        )
    )
    assert (again.order_id, again.created) == (first, False)
    assert await flow.stored_orders() == 1


async def test_a_duplicate_delivery_of_order_submitted_does_not_send_twice(flow: Flow) -> None:
    order_id = await flow.place()
    await flow.settle(order_id, OrderStatus.FILLED, "10")
    async with flow.platform.database.connect() as conn:
        payloads = (await conn.execute(select(outbox.c.payload))).scalars().all()
    from tradeloom.domain.events import decode_event

    [submitted] = [
        e
        for e in map(decode_event, payloads)
        if isinstance(e.payload, OrderSubmitted) and e.payload.order_id == order_id
    ]
    sent_before = flow.platform.execution.sent
    await flow.platform.execution.handle(submitted)  # the bus delivering it again
    assert flow.platform.execution.sent == sent_before
    assert flow.platform.execution.skipped >= 1
    await flow.settle(order_id, OrderStatus.FILLED, "10")


async def test_a_crash_between_commit_and_publish_is_recovered_by_the_relay(flow: Flow) -> None:
    await flow.platform.relay.close()  # the process "dies" right after committing
    order_id = await flow.place()
    assert await flow.status(order_id) == (OrderStatus.PENDING_NEW, Decimal(0))
    await flow.platform.relay.start()  # the next process's relay finds the row
    await flow.settle(order_id, OrderStatus.FILLED, "10")


async def test_a_broker_that_is_down_sends_the_order_to_dead_letter(flow: Flow) -> None:
    flow.platform.broker.stop()
    order_id = await flow.place()
    await flow.settle(order_id, OrderStatus.REJECTED, "0")
    assert "BROKER_UNAVAILABLE" in ((await flow.order(order_id)).reason or "")
    await eventually_equals(lambda: _dead_reasons(flow), ["BROKER_UNAVAILABLE"])


async def _dead_reasons(flow: Flow) -> list[str]:
    return [letter.reason for letter in flow.dead_letters]


async def test_a_fill_after_the_gateway_timed_out_is_still_published(
    tmp_path: Path,
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/late.db", broker_timeout=0.2, paper_latency=0.6
    )
    platform = build_platform(settings)
    await platform.start()
    try:
        late = Flow(platform, "acc-late")
        await platform.accounts.create(late.account, "bob", Decimal(1_000_000))
        await late.quote("AAPL", "187.20", "187.25")
        order_id = await late.place()
        await late.settle(order_id, OrderStatus.FILLED, "10")
        assert platform.gateway.reports_delivered >= 2
    finally:
        await platform.close()


async def test_an_amend_that_adds_exposure_is_refused(flow: Flow) -> None:
    order_id = await flow.place(order_type="limit", limit_price="180.00", time_in_force="gtc")
    await flow.settle(order_id, OrderStatus.ACCEPTED, "0")
    for change in ({"quantity": Decimal(20)}, {"limit_price": Decimal("181.00")}):
        with pytest.raises(DomainError) as refused:
            await flow.platform.orders.amend(
                AmendOrder(
                    account_id=flow.account, order_id=order_id, correlation_id=new_id(), **change
                )
            )
        assert refused.value.code == "amend_adds_exposure"
    assert await flow.status(order_id) == (OrderStatus.ACCEPTED, Decimal(0))


async def test_another_users_order_cannot_be_canceled(flow: Flow) -> None:
    order_id = await flow.place(order_type="limit", limit_price="180.00", time_in_force="gtc")
    with pytest.raises(DomainError) as refused:
        await flow.platform.orders.cancel(
            CancelOrder(
                account_id=flow.account,
                order_id=order_id,
                correlation_id=new_id(),
                user_id="mallory",
            )
        )
    assert refused.value.code == "order_not_found"


async def test_twin_requests_racing_at_the_limit_both_get_the_one_order(flow: Flow) -> None:
    await flow.platform.limits.set_limits("alice", max_open_orders=1)
    command = PlaceOrder(
        account_id=flow.account,
        client_order_id="twin",
        symbol="AAPL",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal(1),
        time_in_force=TimeInForce.GTC,
        limit_price=Decimal("150.00"),
        correlation_id=new_id(),
        user_id="alice",
    )
    first, second = await asyncio.gather(
        flow.platform.orders.place(command), flow.platform.orders.place(command)
    )
    assert first.order_id == second.order_id
    assert sorted([first.created, second.created]) == [False, True]
    assert await flow.stored_orders() == 1

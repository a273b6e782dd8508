"""The order read model fed by the real order path, on the embedded default and on
PostgreSQL, Redis and NATS: orders placed, filled, amended, canceled and rejected through the
OMS, execution and the paper broker end up in ``order_views`` exactly as the command side
sees them, and a rebuild from ``order_history`` finds (and repairs) any difference."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.helpers import eventually_equals
from tests.integration.test_order_flow import Flow, settings_for
from tradeloom.bootstrap import build_platform
from tradeloom.domain.commands import AmendOrder, CancelOrder
from tradeloom.domain.ids import new_id
from tradeloom.domain.orders import OrderStatus
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.oms.projection import OrderProjection
from tradeloom.oms.queries import OrderQueries
from tradeloom.oms.rebuild import rebuild_order_views
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.schema import order_views

OWNER = "alice"  # the account's owner in Flow; accounts are unique per test


@dataclass
class ReadFlow:
    flow: Flow
    queries: OrderQueries

    async def both_sides(self, order_id: str) -> tuple[object, ...] | None:
        """The read model's view of the order next to the command side's, as one tuple each
        for the fields both keep; None until the view exists."""
        view = await self.queries.get(OWNER, order_id)
        if view is None:
            return None
        order = await self.flow.order(order_id)
        return (
            (view.status, view.quantity, view.filled_quantity, view.average_fill_price),
            (view.limit_price, view.reason, view.account_id),
        ), (
            (order.status, order.quantity, order.filled_quantity, order.average_fill_price),
            (order.limit_price, order.reason, order.account_id),
        )

    async def settles_like_the_command_side(self, order_id: str, status: OrderStatus) -> None:
        """Wait for the command side to reach ``status``, then for the view to agree."""

        async def command_status() -> OrderStatus:
            return (await self.flow.order(order_id)).status

        async def agree() -> bool:
            sides = await self.both_sides(order_id)
            return sides is not None and sides[0] == sides[1]

        await eventually_equals(command_status, status)
        await eventually_equals(agree, True, what=f"order {order_id}'s view to match")


@pytest.fixture(params=["embedded", "production"])
async def read_flow(
    request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> AsyncIterator[ReadFlow]:
    settings = settings_for(request.param, tmp_path, request, unique)
    if request.param == "production":
        await upgrade_database(settings.database_url)
    platform = build_platform(settings)
    await platform.start()
    projection = OrderProjection(
        platform.bus, platform.database, platform.clock, metrics=platform.metrics
    )
    await projection.start()
    flow = Flow(platform, f"acc-{unique}")
    await platform.accounts.create(flow.account, OWNER, Decimal(1_000_000))
    await flow.quote("AAPL", "187.20", "187.25")
    yield ReadFlow(flow, OrderQueries(platform.database))
    await projection.stop()
    await platform.close()
    if request.param == "production":
        await delete_bus_streams(settings.bus_url, settings.namespace.upper())


async def test_orders_through_the_real_path_read_back_as_the_command_side_sees_them(
    read_flow: ReadFlow,
) -> None:
    flow = read_flow.flow
    filled = await flow.place(quantity=250)  # fills in three parts against the displayed size
    await flow.settle(filled, OrderStatus.PARTIALLY_FILLED, "100")
    await flow.quote("AAPL", "187.20", "187.26")
    await flow.settle(filled, OrderStatus.PARTIALLY_FILLED, "200")
    await flow.quote("AAPL", "187.20", "187.27")
    await read_flow.settles_like_the_command_side(filled, OrderStatus.FILLED)

    resting = await flow.place(order_type="limit", limit_price="180.00", time_in_force="gtc")
    await read_flow.settles_like_the_command_side(resting, OrderStatus.ACCEPTED)
    amend = AmendOrder(
        account_id=flow.account,
        order_id=resting,
        correlation_id=new_id(),
        limit_price=Decimal("179.00"),
    )
    await flow.platform.orders.amend(amend)
    amended: Decimal | None = Decimal("179.00")
    await eventually_equals(lambda: _limit(read_flow, resting), amended)
    cancel = CancelOrder(account_id=flow.account, order_id=resting, correlation_id=new_id())
    await flow.platform.orders.cancel(cancel)
    await read_flow.settles_like_the_command_side(resting, OrderStatus.CANCELED)

    flow.platform.broker.halt("AAPL")
    refused = await flow.place()
    await read_flow.settles_like_the_command_side(refused, OrderStatus.REJECTED)

    view = await read_flow.queries.get(OWNER, filled)
    assert view is not None
    assert view.average_fill_price == Decimal("187.258")
    assert view.event_count == 5  # submitted, accepted, three fills
    types = [e.event_type for e in await read_flow.queries.history(OWNER, resting)]
    assert types == [
        "order.submitted",
        "order.accepted",
        "order.amend_requested",
        "order.replaced",
        "order.cancel_requested",
        "order.canceled",
    ]

    ours = {filled, resting, refused}
    clean = await rebuild_order_views(flow.platform.database, repair=False)
    assert ours.isdisjoint(clean.differing_orders)

    async with flow.platform.database.transaction() as conn:
        await conn.execute(
            update(order_views)
            .where(order_views.c.order_id == filled)
            .values(status="accepted", filled_quantity=Decimal(7))
        )
    repaired = await rebuild_order_views(flow.platform.database, repair=True)
    assert {(d.order_id, d.field) for d in repaired.differences if d.order_id in ours} == {
        (filled, "status"),
        (filled, "filled_quantity"),
    }
    assert repaired.repaired
    assert await read_flow.queries.get(OWNER, filled) == view


async def _limit(read_flow: ReadFlow, order_id: str) -> Decimal | None:
    view = await read_flow.queries.get(OWNER, order_id)
    return None if view is None else view.limit_price

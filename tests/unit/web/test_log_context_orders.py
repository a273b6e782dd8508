"""On the whole app: an order command carries its request's correlation id, the one its
response names and its request's log lines carry, so the events it causes share it too.

(Execution's answers to a cancel, such as ``order.canceled``, carry the order's own
correlation id, the placement's: the cancel request's id is on ``order.cancel_requested``.)
"""

from __future__ import annotations

from pathlib import Path

import structlog
from sqlalchemy import select

from tests.unit.web.trading_world import TradingWorld, trading_world
from tradeloom.domain.events import Event, decode_event
from tradeloom.storage.schema import outbox


async def outbox_events(world: TradingWorld, event_type: str) -> list[Event]:
    query = select(outbox.c.payload).where(outbox.c.event_type == event_type)
    async with world.platform.database.connect() as conn:
        return [decode_event(payload) for payload in (await conn.scalars(query)).all()]


async def test_a_command_and_its_events_carry_the_requests_correlation_id(
    tmp_path: Path,
) -> None:
    async with trading_world(tmp_path) as world:
        await world.quote("AAPL", "187.20", "187.25")
        alice = await world.trader("alice")

        placed = await alice.place()
        order_id = placed.json()["order_id"]
        await alice.settles(order_id, status="accepted")
        canceled = await alice.call("DELETE", f"/api/orders/{order_id}")
        await alice.settles(order_id, status="canceled")
        history = (await alice.call("GET", f"/api/orders/{order_id}/history")).json()
        cancel_requests = await outbox_events(world, "order.cancel_requested")

    assert placed.status_code == 202, placed.text
    assert canceled.status_code == 202, canceled.text
    place_id, cancel_id = placed.headers["X-Correlation-ID"], canceled.headers["X-Correlation-ID"]
    assert placed.json()["correlation_id"] == place_id
    assert canceled.json()["correlation_id"] == cancel_id
    by_type = {event["type"]: event["correlation_id"] for event in history["events"]}
    assert by_type["order.submitted"] == place_id, history
    assert [event.correlation_id for event in cancel_requests] == [cancel_id]
    assert structlog.contextvars.get_contextvars() == {}, "the requests left a context bound"

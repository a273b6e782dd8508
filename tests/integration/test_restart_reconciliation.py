"""The worker's execution restarts: its paper venue comes back empty, and reconciliation at
start ends what the old venue held (canceled) and what was claimed but never sent (rejected),
releasing their buying power, on the embedded default and on PostgreSQL, Redis and NATS.

The rest of the platform (database, bus, cache, OMS, read side) keeps running, as it would in
a deployment where only the execution process restarts; in the embedded default this is also
the only way to keep risk's in-process reservations across the restart to see them released.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.helpers import eventually, eventually_equals
from tests.integration.test_order_flow import Flow, settings_for
from tradeloom.bootstrap import Platform, build_platform
from tradeloom.broker.gateway import BrokerGateway
from tradeloom.broker.paper import PaperBroker
from tradeloom.domain.events import Event, OrderSubmitted
from tradeloom.domain.orders import OrderStatus
from tradeloom.execution.engine import ExecutionEngine
from tradeloom.execution.reconcile import NOT_SENT, NOT_SENT_REASON
from tradeloom.execution.reports import ReportRecorder
from tradeloom.execution.store import claim_orders, claim_row
from tradeloom.messaging.nats import delete_bus_streams
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.resilience.circuit_breaker import CircuitBreaker
from tradeloom.risk.exposure import Exposure
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.schema import broker_orders


@dataclass
class Execution:
    """One incarnation of the worker's execution: a paper venue, its gateway, the engine."""

    broker: PaperBroker
    gateway: BrokerGateway
    engine: ExecutionEngine

    async def stop(self) -> None:
        await self.engine.stop()
        await self.gateway.stop(drain_within=2.0)


async def restart_execution(platform: Platform) -> Execution:
    """Stop the platform's execution and start a new one over a NEW paper venue, wired as
    bootstrap wires it (the engine reconciles as it starts)."""
    await platform.execution.stop()
    await platform.gateway.stop(drain_within=2.0)
    clock = platform.clock
    broker = PaperBroker(platform.instruments.values(), clock)
    recorder = ReportRecorder(
        platform.database, platform.outbox, clock, notify=platform.relay.notify
    )
    gateway = BrokerGateway(
        broker,
        recorder.record_many,
        breaker=CircuitBreaker(clock=clock, name="broker"),
        clock=clock,
        timeout=platform.settings.broker_timeout,
    )
    await gateway.start()
    engine = ExecutionEngine(
        platform.bus,
        platform.database,
        platform.outbox,
        gateway,
        clock,
        notify=platform.relay.notify,
        metrics=platform.metrics,
    )
    execution = Execution(broker, gateway, engine)
    try:
        await engine.start()
        assert engine.active, "the stopped engine released the execution lock; this one has it"
        assert engine.reconciled, "the paper venue answers at once: the pass at start succeeded"
    except BaseException:
        await execution.stop()  # never leave the execution lock held for the next test
        raise
    return execution


@dataclass
class Restart:
    flow: Flow
    exposure: Exposure
    submitted: list[OrderSubmitted]

    async def reserved(self) -> tuple[int, int]:
        """The account's reserved money (in units) and open-order count, as risk sees them."""
        snapshot = await self.exposure.snapshot(self.flow.account)
        return snapshot.reserved_units, snapshot.open_orders


@pytest.fixture(params=["embedded", "production"])
async def restart(
    request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> AsyncIterator[Restart]:
    settings = settings_for(request.param, tmp_path, request, unique)
    if request.param == "production":
        await upgrade_database(settings.database_url)
    platform = build_platform(settings)
    await platform.start()
    flow = Flow(platform, f"acc-{unique}")
    made = Restart(flow, Exposure(platform.cache), [])

    async def on_command(events: Sequence[Event]) -> None:
        made.submitted += [e.payload for e in events if isinstance(e.payload, OrderSubmitted)]

    await platform.bus.subscribe_batch(ORDER_COMMANDS.name, "test-commands", on_command)
    await platform.accounts.create(flow.account, "alice", Decimal(1_000_000))
    await flow.quote("AAPL", "187.20", "187.25")
    yield made
    await platform.close()
    if request.param == "production":
        await delete_bus_streams(settings.bus_url, settings.namespace.upper())


async def test_a_resting_order_the_restarted_venue_forgot_is_canceled_and_released(
    restart: Restart,
) -> None:
    flow = restart.flow
    resting = await flow.place(order_type="limit", limit_price="180.00", time_in_force="gtc")
    await flow.settle(resting, OrderStatus.ACCEPTED, "0")
    reserved, open_orders = await restart.reserved()
    assert (open_orders, reserved > 0) == (1, True), "the resting buy holds its reservation"

    execution = await restart_execution(flow.platform)
    try:
        await flow.settle(resting, OrderStatus.CANCELED, "0")
        order = await flow.order(resting)
        assert "no longer at the broker" in (order.reason or "")
        await eventually_equals(restart.reserved, (0, 0), what="the reservation is released")
        await eventually_equals(
            lambda: _view_status(flow, resting), OrderStatus.CANCELED, what="the read model"
        )
        assert await _closed_as(platform=flow.platform, order_id=resting) == "venue_lost"
    finally:
        await execution.stop()


async def test_an_order_claimed_but_never_sent_is_rejected_and_released(
    restart: Restart,
) -> None:
    """The crash between the claim's commit and the send: the claim is committed by hand
    while execution is down, so the order is never sent; the restarted engine rejects it,
    and the command redelivered afterwards sends nothing."""
    flow = restart.flow
    platform = flow.platform
    await platform.execution.stop()  # execution is down: the command waits on the bus
    order_id = await flow.place(order_type="limit", limit_price="180.00", time_in_force="gtc")
    await eventually_equals(lambda: _submitted_ids(restart), [order_id], what="the command")
    [command] = restart.submitted
    async with platform.database.transaction() as conn:
        row = claim_row(order_id, flow.account, "AAPL", command.side, "corr", "cause")
        await claim_orders(conn, [row], platform.clock.now())
    assert (await restart.reserved())[1] == 1

    execution = await restart_execution(platform)
    try:
        await flow.settle(order_id, OrderStatus.REJECTED, "0")
        assert (await flow.order(order_id)).reason == f"{NOT_SENT}: {NOT_SENT_REASON}"
        assert await _closed_as(platform=platform, order_id=order_id) == "not_sent"
        await eventually_equals(restart.reserved, (0, 0), what="the reservation is released")
        await eventually(lambda: execution.engine.skipped == 1, message="the command consumed")
        assert execution.engine.sent == 0, "the redelivered command must not reach the broker"
    finally:
        await execution.stop()


async def _submitted_ids(restart: Restart) -> list[str]:
    return [command.order_id for command in restart.submitted]


async def _view_status(flow: Flow, order_id: str) -> OrderStatus | None:
    view = await flow.platform.order_queries.get("alice", order_id)
    return None if view is None else view.status


async def _closed_as(*, platform: Platform, order_id: str) -> str | None:
    """How execution's own row of ``order_id`` says the order ended (None: still open)."""
    query = select(broker_orders.c.closed_as).where(broker_orders.c.order_id == order_id)
    async with platform.database.connect() as conn:
        closed: str | None = await conn.scalar(query)
    return closed

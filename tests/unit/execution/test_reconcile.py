"""Reconciliation with the broker when the execution engine starts.

Each test runs a first "process" (an engine over a gateway over a ``ScriptedBroker``), then
restarts: a new engine over a new gateway, over a new broker (the venue forgot everything) or
the same one (the venue still works its orders). A pass reads EVERY open ``broker_orders`` row,
so each test has a database of its own (``own_database``, see conftest.py). The tests of the
execution lock run two engines at once on one PostgreSQL database, as two processes would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.helpers import eventually, eventually_equals
from tests.unit.execution.scripted_broker import ScriptedBroker
from tradeloom.broker.gateway import BrokerGateway
from tradeloom.broker.reports import BrokerFill, BrokerReport
from tradeloom.domain.events import (
    AnyPayload,
    Event,
    OrderCanceled,
    OrderRejected,
    OrderSubmitted,
    decode_event,
    new_event,
)
from tradeloom.domain.orders import OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock
from tradeloom.execution.engine import ExecutionEngine, ExecutionStepsDown
from tradeloom.execution.lock import EXECUTION_LOCK_ID, ExecutionLock
from tradeloom.execution.reconcile import NOT_SENT, NOT_SENT_REASON, Reconciler
from tradeloom.execution.reports import OutboxItem, ReportRecorder
from tradeloom.execution.store import claim_orders, claim_row
from tradeloom.messaging.memory import MemoryBus
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.observability.metrics import Metrics
from tradeloom.resilience.circuit_breaker import CircuitBreaker
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import broker_orders, outbox

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
ACCOUNT = "acc-1"


@dataclass
class Run:
    """One process's execution: its broker, gateway and engine."""

    broker: ScriptedBroker
    gateway: BrokerGateway
    engine: ExecutionEngine
    recorder: ReportRecorder
    bus: MemoryBus


class World:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.clock = ManualClock(NOW)
        self.metrics = Metrics()
        self.runs: list[Run] = []

    async def run(
        self,
        broker: ScriptedBroker | None = None,
        *,
        slow_sink: bool = False,
        refused: set[str] | None = None,
        order_timeout: float = 0.1,
        lock_retry_every: float = 0.05,
    ) -> Run:
        """A started gateway and an engine over ``broker`` (a new, empty one by default);
        the engine is not started: ``await run.engine.start()`` is the restart. A slow sink
        takes a while to record each batch of reports, as a loaded database would; the sink
        refuses (and the gateway retries) a batch with a report of an order in ``refused``."""
        broker = broker or ScriptedBroker()
        recorder = ReportRecorder(self.database, Outbox(self.clock), self.clock)
        refusing = refused if refused is not None else set()

        async def sink(reports: Sequence[BrokerReport]) -> None:
            if slow_sink:
                await asyncio.sleep(0.2)
            if any(report.order_id in refusing for report in reports):
                raise ConnectionError("the database refuses this batch")
            await recorder.record_many(reports)

        breaker = CircuitBreaker(failure_threshold=100, reset_timeout=30.0, clock=self.clock)
        gateway = BrokerGateway(
            broker,
            sink,
            breaker=breaker,
            clock=self.clock,
            timeout=order_timeout,
            query_timeout=0.1,
            sink_retry_max_delay=0.1,
        )
        await gateway.start()
        bus = MemoryBus()
        await bus.start()
        lock = ExecutionLock(
            self.database, retry_every=lock_retry_every, check_every=0.05, check_timeout=1.0
        )
        engine = ExecutionEngine(
            bus,
            self.database,
            Outbox(self.clock),
            gateway,
            self.clock,
            metrics=self.metrics,
            lock=lock,
            reconcile_retry_delay=0.01,
            reconcile_retry_max_delay=0.05,
        )
        run = Run(broker, gateway, engine, recorder, bus)
        self.runs.append(run)
        return run

    async def stop(self, run: Run) -> None:
        await run.engine.stop()
        await run.bus.close()
        await run.gateway.stop(drain_within=2.0)

    async def close(self) -> None:
        for run in self.runs:
            await self.stop(run)

    async def claim_without_sending(self, name: str) -> None:
        """The state a crash between the claim's commit and the send leaves."""
        async with self.database.transaction() as conn:
            row = claim_row(name, ACCOUNT, "AAPL", Side.BUY, f"corr-{name}", f"evt-{name}")
            await claim_orders(conn, [row], NOW)

    async def published(self) -> list[AnyPayload]:
        async with self.database.connect() as conn:
            query = select(outbox.c.payload).order_by(outbox.c.sequence)
            payloads = (await conn.execute(query)).scalars().all()
        return [decode_event(payload).payload for payload in payloads]

    async def kinds(self) -> list[tuple[str, str]]:
        """(event type, order id) of everything published, in order."""
        return [(type(p).__name__, p.order_id) for p in await self.published()]  # type: ignore[union-attr]

    async def closed_as(self) -> dict[str, str | None]:
        query = select(broker_orders.c.order_id, broker_orders.c.closed_as)
        async with self.database.connect() as conn:
            return {order_id: closed for order_id, closed in await conn.execute(query)}

    def counted(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "tradeloom_reconciled_orders_total", {"outcome": outcome}
        )
        return value or 0.0

    def failures(self) -> float:
        value = self.metrics.registry.get_sample_value("tradeloom_reconciliation_failures_total")
        return value or 0.0


@pytest.fixture
async def world(own_database: Database) -> AsyncIterator[World]:
    made = World(own_database)
    yield made
    await made.close()


def submitted(name: str) -> Event:
    payload = OrderSubmitted(
        order_id=name,
        client_order_id=f"c-{name}",
        symbol="AAPL",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal(10),
        time_in_force=TimeInForce.GTC,
        limit_price=Decimal("187.25"),
    )
    return new_event(payload, occurred_at=NOW, correlation_id=f"corr-{name}", account_id=ACCOUNT)


async def send(run: Run, *names: str) -> None:
    """Orders sent and acknowledged in ``run`` (its reports recorded)."""
    await run.engine.handle_batch([submitted(name) for name in names])
    await run.gateway.wait_delivered()


async def test_an_order_claimed_but_never_sent_is_rejected_as_not_sent(world: World) -> None:
    await world.claim_without_sending("o1")
    restarted = await world.run()
    await restarted.engine.start()

    [rejected] = await world.published()
    assert isinstance(rejected, OrderRejected)
    assert (rejected.order_id, rejected.code) == ("o1", NOT_SENT)
    assert rejected.reason == NOT_SENT_REASON
    assert "never acknowledged by the broker" in rejected.reason
    assert await world.closed_as() == {"o1": "not_sent"}
    assert world.counted("not_sent") == 1

    await restarted.engine.handle(submitted("o1"))  # the bus redelivers the command
    assert restarted.broker.requests == [], "a rejected order must never reach the broker"


async def test_an_acknowledged_order_the_venue_forgot_is_canceled(world: World) -> None:
    first = await world.run()
    await send(first, "o1", "o2")
    await world.stop(first)
    first.broker.working.remove("o2")  # o2 ended at the venue before the restart...
    await first.recorder.record_many([_final_fill("o2")])  # ...and its fill was recorded

    restarted = await world.run()  # a new venue: it knows neither
    await restarted.engine.start()

    assert await world.kinds() == [
        ("OrderAccepted", "o1"),
        ("OrderAccepted", "o2"),
        ("OrderFilled", "o2"),
        ("OrderCanceled", "o1"),
    ]
    canceled = (await world.published())[-1]
    assert isinstance(canceled, OrderCanceled)
    assert "no longer at the broker" in canceled.reason
    assert await world.closed_as() == {"o1": "venue_lost", "o2": "filled"}
    assert (world.counted("venue_lost"), world.counted("not_sent")) == (1, 0)


async def test_an_order_the_broker_still_works_is_left_alone(world: World) -> None:
    first = await world.run()
    await send(first, "o1")
    await world.claim_without_sending("o2")
    await world.stop(first)
    first.broker.working.append("o2")  # the send went out after all, just before the crash

    restarted = await world.run(first.broker)  # the same venue: it still works both
    await restarted.engine.start()

    assert await world.kinds() == [("OrderAccepted", "o1")]
    assert await world.closed_as() == {"o1": None, "o2": None}
    assert world.counted("at_broker") == 2


async def test_a_final_fill_reported_before_the_answer_is_not_also_a_cancel(
    world: World,
) -> None:
    first = await world.run()
    await send(first, "o1")
    await world.stop(first)

    venue = ScriptedBroker()  # it filled o1, then answers that o1 is no longer open
    venue.answering = False
    restarted = await world.run(venue, slow_sink=True)
    venue.report(_final_fill("o1"))
    await restarted.engine.start()

    assert await world.kinds() == [("OrderAccepted", "o1"), ("OrderFilled", "o1")]
    assert await world.closed_as() == {"o1": "filled"}


@pytest.mark.parametrize("outage", ["failing", "silent"])
async def test_a_broker_that_cannot_be_asked_changes_nothing_and_is_asked_again(
    world: World, outage: str
) -> None:
    await world.claim_without_sending("o1")
    venue = ScriptedBroker()
    setattr(venue, outage, True)  # the query is refused, or never answered
    restarted = await world.run(venue)
    await restarted.engine.start()

    assert await world.published() == []
    assert await world.closed_as() == {"o1": None}
    assert not restarted.engine.reconciled
    assert world.failures() >= 1

    setattr(venue, outage, False)
    await eventually(lambda: restarted.engine.reconciled, 5.0, message="a retry succeeded")
    assert await world.kinds() == [("OrderRejected", "o1")]


async def test_a_pass_that_fails_half_way_changes_nothing_and_passes_run_once(
    world: World,
) -> None:
    await world.claim_without_sending("o1")
    first = await world.run()
    await send(first, "o2")
    await world.stop(first)
    restarted = await world.run()

    broken = Reconciler(world.database, _BrokenOutbox(), restarted.gateway, world.clock)
    assert await broken.reconcile() is None, "the outbox write failed: no outcome"
    assert await world.kinds() == [("OrderAccepted", "o2")]
    assert await world.closed_as() == {"o1": None, "o2": None}

    reconciler = restarted.engine.reconciler
    found = await reconciler.reconcile()
    assert found is not None
    assert (found.not_sent, found.venue_lost) == (("o1",), ("o2",))
    again = await reconciler.reconcile()
    assert again is not None
    assert (again.not_sent, again.venue_lost, again.at_broker) == ((), (), ())
    assert await world.kinds() == [
        ("OrderAccepted", "o2"),
        ("OrderRejected", "o1"),
        ("OrderCanceled", "o2"),
    ]


async def test_an_order_sent_while_the_broker_could_not_be_asked_is_left_open(
    world: World,
) -> None:
    """The retry path: the first pass fails, commands are consumed meanwhile, and the retry
    that succeeds judges only the previous run's rows, never this run's claims: o2 is handed
    over (claimed) but not yet at the venue when the outage lifts, and the venue's answer
    does not show it; it must stay open, and its acknowledgement still reach it."""
    await world.claim_without_sending("o1")  # the previous run's
    venue = ScriptedBroker()
    venue.silent = True
    restarted = await world.run(venue, order_timeout=0.5)
    await restarted.engine.start()
    assert not restarted.engine.reconciled

    venue.lagging = True
    sending = asyncio.create_task(restarted.engine.handle_batch([submitted("o2")]))
    await eventually(lambda: len(venue.requests) == 1, 5.0, message="o2 handed over")
    venue.silent = False  # the outage lifts while o2 is on its way
    await sending  # its answer timed out: sent, outcome unknown
    await eventually(lambda: restarted.engine.reconciled, 5.0, message="a retry succeeded")

    assert venue.working == [], "the venue's answer did not show o2"
    assert await world.kinds() == [("OrderRejected", "o1")]
    assert await world.closed_as() == {"o1": "not_sent", "o2": None}
    venue.arrive()
    await eventually_equals(
        world.kinds, [("OrderRejected", "o1"), ("OrderAccepted", "o2")], what="o2's answer"
    )


async def test_an_engine_stopped_while_unreconciled_starts_over(world: World) -> None:
    await world.claim_without_sending("o1")
    venue = ScriptedBroker()
    venue.silent = True
    restarted = await world.run(venue)
    await restarted.engine.start()
    assert not restarted.engine.reconciled
    await restarted.engine.stop()

    venue.silent = False
    await restarted.engine.start()
    assert restarted.engine.reconciled, "the pass at this start succeeded"
    assert await world.kinds() == [("OrderRejected", "o1")]
    await send(restarted, "o2")
    assert await world.kinds() == [("OrderRejected", "o1"), ("OrderAccepted", "o2")]


async def test_an_order_whose_earlier_report_is_stuck_is_left_out_of_the_pass(
    world: World,
) -> None:
    first = await world.run()
    await send(first, "o1", "o2")
    await world.stop(first)

    venue = ScriptedBroker()  # filled o1 just before it answers; o2 it forgot
    venue.answering = False
    refused = {"o1"}  # the fill of o1 cannot be recorded for now (retried)
    restarted = await world.run(venue, refused=refused)
    venue.report(_final_fill("o1"))
    reconciler = Reconciler(
        world.database, Outbox(world.clock), restarted.gateway, world.clock, delivery_timeout=0.2
    )
    found = await reconciler.reconcile()

    assert found is not None, "a stuck report does not fail the pass"
    assert (found.in_transit, found.venue_lost, found.not_sent) == (("o1",), ("o2",), ())
    assert await world.closed_as() == {"o1": None, "o2": "venue_lost"}
    refused.clear()
    await restarted.gateway.wait_delivered()
    assert await world.closed_as() == {"o1": "filled", "o2": "venue_lost"}
    assert ("OrderCanceled", "o1") not in await world.kinds()


async def test_a_batch_fetched_before_the_engine_stepped_down_is_refused_not_sent(
    world: World,
) -> None:
    run = await world.run()
    await run.engine.start()
    await world.stop(run)
    with pytest.raises(ExecutionStepsDown):
        await run.engine.handle_batch([submitted("o1")])  # the bus redelivers it elsewhere
    assert run.broker.requests == []
    assert await world.closed_as() == {}, "nothing was claimed"


@pytest.mark.postgres
async def test_a_lock_released_under_the_engine_is_noticed_as_lost(pg_world: World) -> None:
    lock = ExecutionLock(pg_world.database, check_every=0.05)
    assert await lock.try_take()
    conn = lock._conn
    assert conn is not None
    await conn.execute(text("SELECT pg_advisory_unlock_all()"))  # the session lives on
    await asyncio.wait_for(lock.lost(), 5.0)
    await lock.release()


@pytest.fixture
async def pg_world(own_postgres_database: Database) -> AsyncIterator[World]:
    made = World(own_postgres_database)
    yield made
    await made.close()


@pytest.mark.postgres
async def test_a_second_engine_stands_by_until_the_first_stops_then_takes_over(
    pg_world: World,
) -> None:
    world = pg_world
    first = await world.run()
    await first.engine.start()
    await send(first, "o1")
    assert first.engine.active

    second = await world.run()  # another process, with a venue of its own
    await second.bus.publish(ORDER_COMMANDS.name, submitted("o2"), ACCOUNT)
    await second.engine.start()
    assert not second.engine.active
    assert (second.broker.queries, second.broker.requests) == (0, []), "it consumes nothing"
    assert await world.closed_as() == {"o1": None}, "nor does it judge the other's orders"

    await world.stop(first)
    await eventually(lambda: second.engine.active, 5.0, message="the standby took over")
    await eventually(lambda: len(second.broker.requests) == 1, 5.0, message="o2 consumed")
    await second.gateway.wait_delivered()
    assert second.broker.queries == 1
    assert await world.kinds() == [
        ("OrderAccepted", "o1"),
        ("OrderCanceled", "o1"),  # reconciled (its venue never had o1) BEFORE consuming
        ("OrderAccepted", "o2"),
    ]


@pytest.mark.postgres
async def test_an_engine_that_loses_the_lock_stops_consuming_and_the_standby_takes_over(
    pg_world: World,
) -> None:
    world = pg_world
    first = await world.run(lock_retry_every=30.0)  # it will not win the lock back here
    await first.engine.start()
    await send(first, "o1")
    second = await world.run()
    await second.engine.start()
    assert (first.engine.active, second.engine.active) == (True, False)

    await _end_the_session_holding_the_lock(world.database)
    await eventually(lambda: not first.engine.active, 5.0, message="the first stepped down")
    await eventually(lambda: second.engine.active, 5.0, message="the standby took over")
    assert await world.closed_as() == {"o1": "venue_lost"}, "the new holder reconciled"
    assert second.broker.queries == 1


async def _end_the_session_holding_the_lock(database: Database) -> None:
    """What a dropped connection or a database failover does to the lock's session."""
    holder = text(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    ids = {"high": EXECUTION_LOCK_ID >> 32, "low": EXECUTION_LOCK_ID & 0xFFFF_FFFF}
    async with database.connect() as conn:
        [pid] = (await conn.execute(holder, ids)).scalars().all()
        assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


class _BrokenOutbox(Outbox):
    """Fails the outbox write, after the pass recorded its keys and closed its rows."""

    async def add_many(self, conn: AsyncConnection, items: Sequence[OutboxItem]) -> None:
        raise ConnectionError("the database went away mid-transaction")


def _final_fill(order_id: str) -> BrokerFill:
    return BrokerFill(
        order_id=order_id,
        account_id=ACCOUNT,
        fill_id=f"{order_id}-f1",
        quantity=Decimal(10),
        price=Decimal("187.25"),
        filled_at=NOW,
        cumulative_quantity=Decimal(10),
        leaves_quantity=Decimal(0),
    )

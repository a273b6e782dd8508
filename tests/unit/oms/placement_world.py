"""Group commit of new orders, scenario by scenario: shared by the SQLite unit test and the
PostgreSQL integration test, so both dialects pass the same checks.

A :class:`Desk` is a migrated database whose write transactions are counted (and can be held
at the door, to play a slow commit), a :class:`PlacementWriter` on it, and an
:class:`OrderCommands` on it with a recording risk port. Every scenario works in its own
account, so a shared PostgreSQL database needs no cleaning.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.helpers import eventually, statements_of
from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.commands import PlaceOrder
from tradeloom.domain.events import Event, OrderSubmitted, decode_event, new_event
from tradeloom.domain.ids import new_id
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import Order, OrderStatus, OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.oms.commands import OrderCommands, OrderReceipt, submitted_payload
from tradeloom.oms.placement import PlacementWriter
from tradeloom.oms.repository import DuplicateClientOrderId
from tradeloom.risk import RiskRejected
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox
from tradeloom.storage.schema import orders, outbox

START = datetime(2025, 3, 14, 14, 30, tzinfo=UTC)
D = Decimal


class CountingDatabase(Database):
    """A database that counts write transactions; after :meth:`hold` each one waits at the
    door until :meth:`open`, as behind a slow commit."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.transactions = 0
        self._door: asyncio.Event | None = None

    def hold(self) -> None:
        self._door = asyncio.Event()

    def open(self) -> None:
        door, self._door = self._door, None
        assert door is not None, "the door was not held"
        door.set()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        self.transactions += 1
        if self._door is not None:
            await self._door.wait()
        async with super().transaction() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def single_statement(self) -> AsyncIterator[AsyncConnection]:
        # On SQLite the base class runs it as transaction(), which counts it already.
        if self.dialect == "postgresql":
            self.transactions += 1
            if self._door is not None:
                await self._door.wait()
        async with super().single_statement() as conn:
            yield conn


class RecordingRisk:
    """A pre-trade risk port that keeps one reservation per accepted order id and refuses the
    client order ids in ``refuse``. ``checked`` lists the client order ids it accepted, each
    appended as the last thing before its check returns."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.refuse: set[str] = set()
        self.checked: list[str] = []

    async def check_and_reserve(self, order: Order, user_id: str | None) -> object:
        await asyncio.sleep(0)  # a cache round trip
        if order.client_order_id in self.refuse:
            raise RiskRejected("refused", code="risk.max_open_orders")
        self.held.add(order.order_id)
        self.checked.append(order.client_order_id)
        return order.order_id

    async def release(self, order_id: str) -> bool:
        await asyncio.sleep(0)
        if order_id not in self.held:
            return False
        self.held.discard(order_id)
        return True


@dataclass
class Desk:
    database: CountingDatabase
    account: str
    clock: ManualClock = field(default_factory=lambda: ManualClock(START))
    risk: RecordingRisk = field(default_factory=RecordingRisk)
    notified: int = 0

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.clock)
        self.writer = self.new_writer()
        instruments = {"AAPL": Instrument("AAPL", D("0.01"), D("1"), D("100"))}
        self.commands = OrderCommands(
            self.database,
            self.outbox,
            self.risk,
            AccountRepository(self.database, self.clock),
            instruments,
            self.clock,
            notify=self._notify,
        )

    def new_writer(self, max_batch: int = 500) -> PlacementWriter:
        return PlacementWriter(self.database, self.outbox, notify=self._notify, max_batch=max_batch)

    def _notify(self) -> None:
        self.notified += 1

    def order(self, client_order_id: str | None = None, *, order_id: str | None = None) -> Order:
        return Order(
            order_id=order_id or new_id(),
            account_id=self.account,
            client_order_id=client_order_id or new_id(),
            symbol="AAPL",
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=D(1),
            time_in_force=TimeInForce.DAY,
            created_at=self.clock.now(),
            correlation_id=new_id(),
            limit_price=D("100.00"),
        )

    def command(self, client_order_id: str, quantity: str = "1") -> PlaceOrder:
        return PlaceOrder(
            account_id=self.account,
            client_order_id=client_order_id,
            symbol="AAPL",
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=D(quantity),
            time_in_force=TimeInForce.DAY,
            correlation_id=new_id(),
            limit_price=D("100.00"),
        )

    async def stored(self) -> dict[str, str]:
        """client order id → order id of the account's stored orders."""
        query = select(orders.c.client_order_id, orders.c.order_id).where(
            orders.c.account_id == self.account
        )
        async with self.database.connect() as conn:
            return {client: order_id for client, order_id in (await conn.execute(query)).all()}

    async def announced(self) -> list[str]:
        """The order ids of the account's ``order.submitted`` outbox rows, in sequence order."""
        query = (
            select(outbox.c.topic, outbox.c.payload)
            .where(outbox.c.key == self.account)
            .order_by(outbox.c.sequence)
        )
        async with self.database.connect() as conn:
            rows = (await conn.execute(query)).all()
        assert {topic for topic, _ in rows} <= {ORDER_COMMANDS.name}
        payloads = [decode_event(payload).payload for _, payload in rows]
        assert all(isinstance(p, OrderSubmitted) for p in payloads), payloads
        return [p.order_id for p in payloads if isinstance(p, OrderSubmitted)]

    async def in_flight(self, transactions: int) -> None:
        """Wait until ``transactions`` write transactions have begun (or wait at the door)."""
        await eventually(
            lambda: self.database.transactions >= transactions,
            message=lambda: f"{self.database.transactions} transactions begun",
        )


def submitted(order: Order) -> Event:
    return new_event(
        submitted_payload(order),
        occurred_at=order.created_at,
        correlation_id=order.correlation_id,
        account_id=order.account_id,
    )


@contextlib.asynccontextmanager
async def open_desk(url: str, account: str) -> AsyncIterator[Desk]:
    """A desk on ``url`` working in ``account``. Its outbox rows (keys that start with the
    account) are deleted at the end: on a shared database another test's relay would
    otherwise publish them to its own bus."""
    database = CountingDatabase(url)
    try:
        yield Desk(database, account)
    finally:
        async with database.transaction() as conn:
            await conn.execute(delete(outbox).where(outbox.c.key.startswith(account)))
        await database.dispose()


async def write_all(writer: PlacementWriter, batch: list[Order]) -> list[BaseException | None]:
    """Hand every order over at once; each one's outcome (None when committed)."""
    return await asyncio.gather(
        *(writer.write(order, submitted(order)) for order in batch), return_exceptions=True
    )


# --- scenarios ----------------------------------------------------------------------------


async def a_lone_order_commits_at_once(desk: Desk) -> None:
    order = desk.order("lone")
    await desk.writer.write(order, submitted(order))
    assert await desk.stored() == {"lone": order.order_id}
    assert await desk.announced() == [order.order_id]
    assert (desk.database.transactions, desk.notified) == (1, 1)


async def orders_handed_over_during_a_transaction_share_the_next_one(desk: Desk) -> None:
    desk.database.hold()
    first = desk.order()
    first_write = asyncio.create_task(desk.writer.write(first, submitted(first)))
    await desk.in_flight(1)
    later = [desk.order() for _ in range(20)]
    writes = [asyncio.create_task(desk.writer.write(o, submitted(o))) for o in later]
    await asyncio.sleep(0)  # every write hands its order over
    assert not any(w.done() for w in (first_write, *writes)), "nothing commits behind the door"
    desk.database.open()
    await asyncio.gather(first_write, *writes)
    assert desk.database.transactions == 2, "the 20 orders queued meanwhile: one transaction"
    assert await desk.announced() == [o.order_id for o in (first, *later)]
    assert desk.notified == 2


async def a_batch_holds_at_most_max_batch_orders(desk: Desk) -> None:
    writer = desk.new_writer(max_batch=5)
    batch = [desk.order() for _ in range(12)]
    assert await write_all(writer, batch) == [None] * 12
    assert desk.database.transactions == 3  # 5 + 5 + 2
    assert await desk.announced() == [o.order_id for o in batch]


async def concurrent_places_share_transactions(desk: Desk) -> None:
    count = 40
    receipts = await asyncio.gather(
        *(desk.commands.place(desk.command(f"c-{n}")) for n in range(count))
    )
    assert all(r.created and r.status is OrderStatus.PENDING_NEW for r in receipts)
    assert desk.database.transactions < count, f"{desk.database.transactions} transactions"
    stored = await desk.stored()
    assert stored == {r.client_order_id: r.order_id for r in receipts}
    assert sorted(await desk.announced()) == sorted(stored.values())
    assert desk.risk.held == set(stored.values())


async def a_new_place_reads_no_order(desk: Desk) -> None:
    with statements_of(desk.database) as sent:
        receipt = await desk.commands.place(desk.command("fresh"))
    assert receipt.created
    reads = [s for s in sent if "FROM orders" in s or "FROM order_fills" in s]
    assert reads == [], f"the hot path looked orders up: {reads}"


async def a_taken_client_order_id_is_a_duplicate_in_a_later_batch(desk: Desk) -> None:
    first, again = desk.order("taken"), desk.order("taken")
    await desk.writer.write(first, submitted(first))
    with pytest.raises(DuplicateClientOrderId):
        await desk.writer.write(again, submitted(again))
    assert await desk.stored() == {"taken": first.order_id}
    assert await desk.announced() == [first.order_id]
    assert desk.notified == 1, "a batch that inserted nothing does not wake the relay"


async def twins_in_one_batch_let_the_first_in(desk: Desk) -> None:
    first, twin, other = desk.order("twin"), desk.order("twin"), desk.order("other")
    outcomes = await write_all(desk.writer, [first, twin, other])
    assert (outcomes[0], outcomes[2]) == (None, None), outcomes
    assert isinstance(outcomes[1], DuplicateClientOrderId), outcomes[1]
    assert desk.database.transactions == 1
    assert await desk.stored() == {"twin": first.order_id, "other": other.order_id}
    assert await desk.announced() == [first.order_id, other.order_id]


async def a_repeated_place_answers_with_the_original_and_releases(desk: Desk) -> None:
    original = await desk.commands.place(desk.command("again"))
    repeat = await desk.commands.place(desk.command("again", quantity="7"))
    assert (original.created, repeat.created) == (True, False)
    assert (repeat.order_id, repeat.correlation_id) == (original.order_id, original.correlation_id)
    assert desk.risk.checked == ["again", "again"], "the repeat went through risk"
    assert desk.risk.held == {original.order_id}, "the repeat's reservation was released"
    assert await desk.announced() == [original.order_id]


async def a_repeat_refused_by_risk_answers_with_the_original(desk: Desk) -> None:
    original = await desk.commands.place(desk.command("full"))
    desk.risk.refuse.update({"full", "refused"})
    repeat = await desk.commands.place(desk.command("full"))
    assert (repeat.order_id, repeat.created) == (original.order_id, False)
    with pytest.raises(RiskRejected):
        await desk.commands.place(desk.command("refused"))
    assert await desk.stored() == {"full": original.order_id}
    assert desk.risk.held == {original.order_id}
    assert await desk.announced() == [original.order_id]


async def a_poisoned_row_fails_only_its_caller(desk: Desk) -> None:
    stored = desk.order("stored")
    stored_event = submitted(stored)
    await desk.writer.write(stored, stored_event)
    batch = [desk.order() for _ in range(10)]
    # Poisons: an order id already stored, and an event id already in the outbox.
    batch[3] = desk.order(order_id=stored.order_id)
    events = [submitted(order) for order in batch]
    events[7] = stored_event
    outcomes = await asyncio.gather(
        *(desk.writer.write(o, e) for o, e in zip(batch, events, strict=True)),
        return_exceptions=True,
    )
    failed = {n for n, outcome in enumerate(outcomes) if outcome is not None}
    assert failed == {3, 7}, outcomes
    assert all(isinstance(outcomes[n], IntegrityError) for n in failed), outcomes
    good = [o.order_id for n, o in enumerate(batch) if n not in failed]
    assert await desk.announced() == [stored.order_id, *good]
    assert set((await desk.stored()).values()) == {stored.order_id, *good}


async def a_queued_writer_cancelled_is_never_written(desk: Desk) -> None:
    desk.database.hold()
    first, cancelled = desk.order(), desk.order()
    first_write = asyncio.create_task(desk.writer.write(first, submitted(first)))
    await desk.in_flight(1)
    queued = asyncio.create_task(desk.writer.write(cancelled, submitted(cancelled)))
    await asyncio.sleep(0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    desk.database.open()
    await first_write
    assert await desk.announced() == [first.order_id]
    assert await desk.stored() == {first.client_order_id: first.order_id}
    assert desk.database.transactions == 1, "a withdrawn order opens no transaction"


async def an_in_flight_writer_cancelled_waits_for_its_batch(desk: Desk) -> None:
    desk.database.hold()
    order = desk.order()
    write = asyncio.create_task(desk.writer.write(order, submitted(order)))
    await desk.in_flight(1)
    write.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not write.done(), "the cancellation waits for the batch's outcome"
    desk.database.open()
    with pytest.raises(asyncio.CancelledError):
        await write
    assert await desk.announced() == [order.order_id], "its batch committed it all the same"


async def a_place_cancelled_while_queued_releases_its_reservation(desk: Desk) -> None:
    desk.database.hold()
    first = asyncio.create_task(desk.commands.place(desk.command("first")))
    await desk.in_flight(1)
    queued = asyncio.create_task(desk.commands.place(desk.command("queued")))
    await eventually(lambda: "queued" in desk.risk.checked, message="the second order's check")
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    desk.database.open()
    receipt = await first
    assert await desk.stored() == {"first": receipt.order_id}
    assert desk.risk.held == {receipt.order_id}
    assert await desk.announced() == [receipt.order_id]


async def a_place_cancelled_in_flight_keeps_its_order_and_reservation(desk: Desk) -> None:
    desk.database.hold()
    place = asyncio.create_task(desk.commands.place(desk.command("in-flight")))
    await desk.in_flight(1)
    place.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not place.done()
    desk.database.open()
    with pytest.raises(asyncio.CancelledError):
        await place
    stored = await desk.stored()
    assert set(stored) == {"in-flight"}
    assert desk.risk.held == set(stored.values()), "a landed order keeps its reservation"
    assert await desk.announced() == list(stored.values())


async def cancelling_places_at_any_point_leaves_orders_and_reservations_in_step(
    desk: Desk,
) -> None:
    """Cancel places after 0, 1, 2, ... loop steps: whatever landed is announced and keeps
    its reservation; whatever did not holds nothing."""
    outcomes: list[OrderReceipt | None] = []
    for steps in range(40):
        place = asyncio.create_task(desk.commands.place(desk.command(f"s-{steps}")))
        for _ in range(steps):
            await asyncio.sleep(0)
        place.cancel()
        try:
            outcomes.append(await place)
        except asyncio.CancelledError:
            outcomes.append(None)
    stored = await desk.stored()
    assert desk.risk.held == set(stored.values())
    assert sorted(await desk.announced()) == sorted(stored.values())
    finished = {r.client_order_id for r in outcomes if r is not None}
    assert finished <= set(stored), "a place that returned has its order stored"
    assert "s-0" not in stored, "a place cancelled before it ran places nothing"


Scenario = Callable[[Desk], Awaitable[None]]

SCENARIOS: list[Scenario] = [
    a_lone_order_commits_at_once,
    orders_handed_over_during_a_transaction_share_the_next_one,
    a_batch_holds_at_most_max_batch_orders,
    concurrent_places_share_transactions,
    a_new_place_reads_no_order,
    a_taken_client_order_id_is_a_duplicate_in_a_later_batch,
    twins_in_one_batch_let_the_first_in,
    a_repeated_place_answers_with_the_original_and_releases,
    a_repeat_refused_by_risk_answers_with_the_original,
    a_poisoned_row_fails_only_its_caller,
    a_queued_writer_cancelled_is_never_written,
    an_in_flight_writer_cancelled_waits_for_its_batch,
    a_place_cancelled_while_queued_releases_its_reservation,
    a_place_cancelled_in_flight_keeps_its_order_and_reservation,
    cancelling_places_at_any_point_leaves_orders_and_reservations_in_step,
]

"""Building blocks of the positions tests: fill events, accounts with unique ids, and reads
of what the projection stored. Shared by the unit, integration and e2e tests of positions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import insert, select

from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.events import (
    Event,
    OrderFilled,
    OrderPartiallyFilled,
    decode_event,
    encode_event,
    new_event,
)
from tradeloom.domain.orders import Side
from tradeloom.domain.time import Clock
from tradeloom.positions.repository import PositionRow, load_positions
from tradeloom.storage.database import Database
from tradeloom.storage.schema import accounts, order_history, outbox

START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
D = Decimal


def new_account_id() -> str:
    return f"acc-{uuid.uuid4().hex[:12]}"


def fill_event(
    account_id: str,
    symbol: str,
    side: Side | str,
    quantity: str | Decimal,
    price: str | Decimal,
    *,
    fee: str | Decimal = "0",
    filled_at: datetime = START,
    fill_id: str | None = None,
    order_id: str = "o-1",
    partial: bool = False,
    occurred_at: datetime | None = None,
) -> Event:
    """An ``order.filled`` (or ``order.partially_filled``) event of one fill."""
    kind = OrderPartiallyFilled if partial else OrderFilled
    payload = kind(
        order_id=order_id,
        fill_id=fill_id or f"fill-{uuid.uuid4().hex[:12]}",
        symbol=symbol,
        side=Side(side),
        quantity=D(quantity),
        price=D(price),
        fee=D(fee),
        filled_at=filled_at,
        cumulative_quantity=D(quantity),
        leaves_quantity=D(0),
    )
    return new_event(
        payload,
        occurred_at=occurred_at or filled_at,
        correlation_id=f"corr-{uuid.uuid4().hex[:8]}",
        account_id=account_id,
    )


async def open_account(
    database: Database, owner: str, cash: str = "100000", clock: Clock | None = None
) -> str:
    account_id = new_account_id()
    await AccountRepository(database, clock).create(account_id, owner, cash)
    return account_id


async def stored_positions(
    database: Database, *account_ids: str
) -> dict[tuple[str, str], PositionRow]:
    async with database.connect() as conn:
        return await load_positions(conn, account_ids)


async def stored_position(database: Database, account_id: str, symbol: str) -> PositionRow:
    found = (await stored_positions(database, account_id)).get((account_id, symbol))
    assert found is not None, f"no position of {account_id} in {symbol}"
    return found


async def stored_cash(database: Database, account_id: str) -> Decimal:
    query = select(accounts.c.cash).where(accounts.c.account_id == account_id)
    async with database.connect() as conn:
        cash = await conn.scalar(query)
    assert isinstance(cash, Decimal), f"no account {account_id}"
    return cash


async def announced(database: Database, account_id: str) -> list[Event]:
    """The position.updated events in the outbox for ``account_id``, in sequence order."""
    query = (
        select(outbox.c.payload)
        .where(outbox.c.topic == "position.updated", outbox.c.key == account_id)
        .order_by(outbox.c.sequence)
    )
    async with database.connect() as conn:
        return [decode_event(payload) for payload in (await conn.execute(query)).scalars()]


async def record_history(database: Database, events: list[Event]) -> None:
    """Write events into ``order_history`` as the order projection keeps them."""
    rows = [
        {
            "event_id": event.id,
            "order_id": getattr(event.payload, "order_id", ""),
            "account_id": event.account_id or "",
            "event_type": event.type,
            "occurred_at": event.occurred_at,
            "correlation_id": event.correlation_id,
            "event": encode_event(event),
        }
        for event in events
    ]
    async with database.transaction() as conn:
        await conn.execute(insert(order_history), rows)

"""The OMS command side: place, cancel and amend orders.

``place`` is the one place the order path blocks: structural validation, then the pre-trade
risk check (which reserves the order's exposure atomically), then the order row and its
``order.submitted`` event commit in ONE transaction (the outbox), then the relay is told to
publish. A refused order is neither persisted nor published, and its reservation is released.

Idempotency: ``client_order_id`` is unique per account. Placing an order again with the same
one returns the original order and creates nothing, even when both requests race (the unique
constraint decides, and the loser releases its reservation).

Cancel and amend are commands too: they move the order to ``pending_cancel`` or
``pending_replace`` and publish the request; execution answers with events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.commands import AmendOrder, CancelOrder, PlaceOrder
from tradeloom.domain.errors import DomainError, IllegalTransition
from tradeloom.domain.events import (
    AnyPayload,
    OrderAmendRequested,
    OrderCancelRequested,
    OrderSubmitted,
    new_event,
)
from tradeloom.domain.ids import new_id
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import Order, OrderStatus
from tradeloom.domain.time import Clock
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.oms.repository import (
    DuplicateClientOrderId,
    find_by_client_order_id,
    insert_order,
    load_order,
    save_order,
)
from tradeloom.oms.validation import validate_terms
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox


class OrderNotFound(DomainError):
    """No such order for this account (another account's order is not found either)."""

    code = "order_not_found"


class OrderNotOpen(DomainError):
    """The order is finished, or a cancel or replace is already pending."""

    code = "order_not_open"


class PreTradeRisk(Protocol):
    """The risk check the OMS runs before it persists anything (a port: see ``risk``)."""

    async def check_and_reserve(self, order: Order, user_id: str | None) -> object:
        """Raise a DomainError with a ``risk.*`` code to refuse; reserve exposure to accept."""

    async def release(self, order_id: str) -> object:
        """Give back what ``check_and_reserve`` reserved for an order that was not placed."""


@dataclass(frozen=True, slots=True)
class OrderReceipt:
    """What the caller is told at once: the order, its status and the correlation id."""

    order_id: str
    client_order_id: str
    status: OrderStatus
    correlation_id: str
    created: bool


def _receipt(order: Order, correlation_id: str, *, created: bool) -> OrderReceipt:
    return OrderReceipt(
        order.order_id, order.client_order_id, order.status, correlation_id, created
    )


class OrderCommands:
    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        risk: PreTradeRisk,
        instruments: Mapping[str, Instrument],
        clock: Clock,
        *,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._risk = risk
        self._instruments = instruments
        self._clock = clock
        self._notify = notify

    async def place(self, command: PlaceOrder) -> OrderReceipt:
        async with self._database.connect() as conn:
            existing = await find_by_client_order_id(
                conn, command.account_id, command.client_order_id
            )
        if existing is not None:
            return _receipt(existing, existing.correlation_id, created=False)
        validate_terms(
            self._instruments,
            command.symbol,
            command.order_type,
            command.time_in_force,
            command.quantity,
            command.limit_price,
            command.stop_price,
        )
        order = self._new_order(command)
        await self._risk.check_and_reserve(order, command.user_id)
        try:
            async with self._database.transaction() as conn:
                await insert_order(conn, order)
                await self._publish(conn, order, _submitted(order), command.correlation_id)
        except DuplicateClientOrderId:
            await self._risk.release(order.order_id)
            async with self._database.connect() as conn:
                original = await find_by_client_order_id(
                    conn, command.account_id, command.client_order_id
                )
            if original is None:  # the winner rolled back after all: let the client retry
                raise
            return _receipt(original, original.correlation_id, created=False)
        except BaseException:
            await self._risk.release(order.order_id)
            raise
        self._notify()
        return _receipt(order, command.correlation_id, created=True)

    async def cancel(self, command: CancelOrder) -> OrderReceipt:
        async with self._database.transaction() as conn:
            order = await self._open_order(conn, command.account_id, command.order_id)
            self._move(order, order.request_cancel)
            await save_order(conn, order, self._clock.now())
            payload = OrderCancelRequested(order_id=order.order_id)
            await self._publish(conn, order, payload, command.correlation_id)
        self._notify()
        return _receipt(order, command.correlation_id, created=False)

    async def amend(self, command: AmendOrder) -> OrderReceipt:
        async with self._database.transaction() as conn:
            order = await self._open_order(conn, command.account_id, command.order_id)
            validate_terms(
                self._instruments,
                order.symbol,
                order.order_type,
                order.time_in_force,
                command.quantity if command.quantity is not None else order.quantity,
                command.limit_price if command.limit_price is not None else order.limit_price,
                command.stop_price if command.stop_price is not None else order.stop_price,
            )
            self._move(order, order.request_replace)
            await save_order(conn, order, self._clock.now())
            payload = OrderAmendRequested(
                order_id=order.order_id,
                quantity=command.quantity,
                limit_price=command.limit_price,
                stop_price=command.stop_price,
            )
            await self._publish(conn, order, payload, command.correlation_id)
        self._notify()
        return _receipt(order, command.correlation_id, created=False)

    def _new_order(self, command: PlaceOrder) -> Order:
        return Order(
            order_id=new_id(),
            account_id=command.account_id,
            client_order_id=command.client_order_id,
            symbol=command.symbol,
            side=command.side,
            order_type=command.order_type,
            quantity=command.quantity,
            time_in_force=command.time_in_force,
            created_at=self._clock.now(),
            correlation_id=command.correlation_id,
            limit_price=command.limit_price,
            stop_price=command.stop_price,
        )

    async def _open_order(self, conn: AsyncConnection, account_id: str, order_id: str) -> Order:
        order = await load_order(conn, order_id, for_update=True)
        if order is None or order.account_id != account_id:
            raise OrderNotFound(f"order {order_id} not found")
        return order

    @staticmethod
    def _move(order: Order, request: Callable[[], None]) -> None:
        try:
            request()
        except IllegalTransition:
            raise OrderNotOpen(f"order {order.order_id} is {order.status}") from None

    async def _publish(
        self, conn: AsyncConnection, order: Order, payload: AnyPayload, correlation_id: str
    ) -> None:
        event = new_event(
            payload,
            occurred_at=self._clock.now(),
            correlation_id=correlation_id,
            account_id=order.account_id,
        )
        await self._outbox.add(conn, ORDER_COMMANDS.name, order.account_id, event)


def _submitted(order: Order) -> OrderSubmitted:
    return OrderSubmitted(
        order_id=order.order_id,
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        order_type=order.order_type,
        quantity=order.quantity,
        time_in_force=order.time_in_force,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
    )

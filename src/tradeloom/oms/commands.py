"""The OMS command side: place, cancel and amend orders.

``place`` is the one place the order path blocks: structural validation, then the pre-trade
risk check (which reserves the order's exposure atomically), then the order row and its
``order.submitted`` event commit in ONE transaction (the outbox), then the relay is told to
publish. That transaction is shared with every order placed meanwhile (group commit, see
:mod:`tradeloom.oms.placement`): the order path reads nothing and writes once per batch. A
refused order is neither persisted nor published, and its reservation is released.

Idempotency: ``client_order_id`` is unique per account. Placing an order again with the same
one returns the original order and creates nothing: the insert finds the id taken (or risk
refuses the repeat first), and only then is the original looked up, its reservation released.
Twins racing in one process are serialised; across processes the unique constraint decides
and the loser answers with the winner's order and releases what it reserved (a loser refused
by risk before the winner committed can still see that refusal: a narrow window, closed once
the web tier routes an account's requests to one process).

Cancel and amend are commands too: they move the order to ``pending_cancel`` or
``pending_replace`` and publish the request; execution answers with events.

While a command is handled, every log line carries its ``correlation_id``, ``user_id`` and
``account_id`` (the placement writer's batches run in a context of their own: they are no one
command's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.accounts import Account
from tradeloom.domain.commands import AmendOrder, CancelOrder, PlaceOrder
from tradeloom.domain.errors import DomainError, IllegalTransition, InvalidOrder
from tradeloom.domain.events import (
    AnyPayload,
    Event,
    OrderAmendRequested,
    OrderCancelRequested,
    OrderSubmitted,
    new_event,
)
from tradeloom.domain.ids import new_id
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import Order, OrderStatus, Side
from tradeloom.domain.time import Clock
from tradeloom.messaging.topics import ORDER_COMMANDS
from tradeloom.observability.logging import log_context
from tradeloom.oms.placement import PlacementWriter
from tradeloom.oms.repository import find_by_client_order_id, load_order, save_order
from tradeloom.oms.validation import validate_terms
from tradeloom.storage.database import Database
from tradeloom.storage.outbox import Outbox

log = structlog.get_logger("tradeloom.oms")


class OrderNotFound(DomainError):
    """No such order for this account (another account's order is not found either)."""

    code = "order_not_found"


class OrderNotOpen(DomainError):
    """The order is finished, or a cancel or replace is already pending."""

    code = "order_not_open"


class AccountOwners(Protocol):
    """Where the OMS learns who owns an account (``AccountRepository`` is one)."""

    async def get(self, account_id: str) -> Account | None: ...


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
        accounts: AccountOwners,
        instruments: Mapping[str, Instrument],
        clock: Clock,
        *,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._risk = risk
        self._accounts = accounts
        self._placing: dict[tuple[str, str], asyncio.Lock] = {}
        self._instruments = instruments
        self._clock = clock
        self._notify = notify
        self._placements = PlacementWriter(database, outbox, notify=notify)

    async def place(self, command: PlaceOrder) -> OrderReceipt:
        # Twins in this process wait for each other, so the second sees the first's order
        # instead of racing it through risk. Across processes the unique constraint and the
        # re-lookup below decide.
        key = (command.account_id, command.client_order_id)
        lock = self._placing.setdefault(key, asyncio.Lock())
        try:
            with _command_log_context(command):
                async with lock:
                    return await self._place(command)
        finally:
            if not lock.locked() and self._placing.get(key) is lock:
                del self._placing[key]

    async def _place(self, command: PlaceOrder) -> OrderReceipt:
        # The hot path reads nothing: a repeated client order id is found by the insert (or
        # refused by validation or risk first), and only then is the original looked up.
        order: Order | None = None
        placed = False
        try:
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
            submitted = self._event(order, submitted_payload(order), command.correlation_id)
            await self._placements.write(order, submitted)
            placed = True
            return _receipt(order, command.correlation_id, created=True)
        except DomainError:
            # A repeat of an order already placed (the id taken, or refused because the
            # original holds the capacity) answers with that order, not an error.
            original = await self._original(command)
            if original is None:
                raise
            return original
        finally:
            if order is not None and not placed:
                await self._release_unplaced(order.order_id)

    async def _original(self, command: PlaceOrder) -> OrderReceipt | None:
        async with self._database.connect() as conn:
            found = await find_by_client_order_id(conn, command.account_id, command.client_order_id)
        return None if found is None else _receipt(found, found.correlation_id, created=False)

    async def _release_unplaced(self, order_id: str) -> None:
        """Nothing was placed (refused, duplicate, cancelled or failed): give back whatever
        was reserved. Release is idempotent and a no-op when risk reserved nothing; an order
        whose commit did land after all keeps its reservation. A failure here is logged,
        never raised over the error that brought us here."""
        try:
            async with self._database.connect() as conn:
                if await load_order(conn, order_id) is not None:
                    return
            await self._risk.release(order_id)
        except Exception:
            log.exception("oms.release_failed", order_id=order_id)

    async def account_of(self, order_id: str) -> str | None:
        """The account an order was placed in (read from the command side, so an order just
        placed is found), or None for an unknown id. Commands still check the owner."""
        async with self._database.connect() as conn:
            order = await load_order(conn, order_id)
        return None if order is None else order.account_id

    async def cancel(self, command: CancelOrder) -> OrderReceipt:
        with _command_log_context(command):
            return await self._cancel(command)

    async def _cancel(self, command: CancelOrder) -> OrderReceipt:
        await self._check_owner(command.account_id, command.user_id)
        async with self._database.transaction() as conn:
            order = await self._open_order(conn, command.account_id, command.order_id)
            self._move(order, order.request_cancel)
            await save_order(conn, order, self._clock.now())
            payload = OrderCancelRequested(order_id=order.order_id)
            await self._publish(conn, order, payload, command.correlation_id)
        self._notify()
        return _receipt(order, command.correlation_id, created=False)

    async def amend(self, command: AmendOrder) -> OrderReceipt:
        """Change a resting order's quantity or prices. Only changes that do not add exposure
        are taken (a smaller quantity; for a buy, a lower limit price): the risk reserved
        when the order was placed still covers them. A larger order is a new order."""
        with _command_log_context(command):
            return await self._amend(command)

    async def _amend(self, command: AmendOrder) -> OrderReceipt:
        await self._check_owner(command.account_id, command.user_id)
        async with self._database.transaction() as conn:
            order = await self._open_order(conn, command.account_id, command.order_id)
            _refuse_added_exposure(order, command)
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

    async def _check_owner(self, account_id: str, user_id: str | None) -> None:
        """A user touches only their own accounts' orders; another's look like none."""
        if user_id is None:
            return
        account = await self._accounts.get(account_id)
        if account is None or account.owner != user_id:
            raise OrderNotFound("order not found")

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
        event = self._event(order, payload, correlation_id)
        await self._outbox.add(conn, ORDER_COMMANDS.name, order.account_id, event)

    def _event(self, order: Order, payload: AnyPayload, correlation_id: str) -> Event:
        return new_event(
            payload,
            occurred_at=self._clock.now(),
            correlation_id=correlation_id,
            account_id=order.account_id,
        )


def _command_log_context(
    command: PlaceOrder | CancelOrder | AmendOrder,
) -> AbstractContextManager[None]:
    """The command's correlation id, user and account on every log line while it is handled
    (risk's included); the same an HTTP request already bound when the command comes from
    one. A command without a user leaves ``user_id`` unbound."""
    return log_context(
        correlation_id=command.correlation_id,
        user_id=command.user_id,
        account_id=command.account_id,
    )


def _refuse_added_exposure(order: Order, command: AmendOrder) -> None:
    if command.quantity is not None and command.quantity > order.quantity:
        raise InvalidOrder(
            f"an amend cannot raise the quantity ({order.quantity} to {command.quantity}): "
            "place a new order for the difference",
            code="amend_adds_exposure",
        )
    raises_buy_limit = (
        order.side is Side.BUY
        and command.limit_price is not None
        and order.limit_price is not None
        and command.limit_price > order.limit_price
    )
    if raises_buy_limit:
        raise InvalidOrder(
            f"an amend cannot raise a buy limit ({order.limit_price} to "
            f"{command.limit_price}): cancel and place a new order",
            code="amend_adds_exposure",
        )


def submitted_payload(order: Order) -> OrderSubmitted:
    """The ``order.submitted`` payload that announces a new order."""
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

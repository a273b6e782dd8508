"""While the OMS handles a command, every log line (risk's and the account lookup's included)
carries the command's correlation id, user and account; afterwards the context is as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import structlog

from tests.unit.observability.json_logs import JsonLines, captured_json_logs
from tests.unit.oms.placement_world import START, RecordingRisk
from tradeloom.accounts.repository import AccountRepository
from tradeloom.domain.accounts import Account
from tradeloom.domain.commands import CancelOrder, PlaceOrder
from tradeloom.domain.market import Instrument
from tradeloom.domain.orders import Order, OrderType, Side, TimeInForce
from tradeloom.domain.time import ManualClock
from tradeloom.observability.logging import log_context
from tradeloom.oms.commands import OrderCommands
from tradeloom.storage.database import Database
from tradeloom.storage.migrate import upgrade_database
from tradeloom.storage.outbox import Outbox

log = structlog.get_logger("tests.oms")


class LoggingRisk(RecordingRisk):
    async def check_and_reserve(self, order: Order, user_id: str | None) -> object:
        log.info("probe.risk_checked", order_id=order.order_id)
        return await super().check_and_reserve(order, user_id)


@dataclass
class LoggingOwners:
    accounts: AccountRepository

    async def get(self, account_id: str) -> Account | None:
        log.info("probe.owner_checked")
        return await self.accounts.get(account_id)


@pytest.fixture
def logs() -> Iterator[JsonLines]:
    with captured_json_logs("oms") as lines:
        yield lines


@pytest.fixture
async def commands(tmp_path: Path) -> AsyncIterator[OrderCommands]:
    url = f"sqlite:///{tmp_path}/commands.db"
    await upgrade_database(url)
    database, clock = Database(url), ManualClock(START)
    accounts = AccountRepository(database, clock)
    await accounts.create("acc-1", "alice", 100_000)
    instruments = {"AAPL": Instrument("AAPL", Decimal("0.01"), Decimal("1"), Decimal("100"))}
    outbox = Outbox(clock)
    yield OrderCommands(
        database, outbox, LoggingRisk(), LoggingOwners(accounts), instruments, clock
    )
    await database.dispose()


def place(correlation_id: str, user_id: str | None = "alice") -> PlaceOrder:
    return PlaceOrder(
        account_id="acc-1",
        client_order_id=correlation_id,
        symbol="AAPL",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal(1),
        time_in_force=TimeInForce.DAY,
        correlation_id=correlation_id,
        limit_price=Decimal("100.00"),
        user_id=user_id,
    )


async def test_placing_logs_in_the_commands_context(
    commands: OrderCommands, logs: JsonLines
) -> None:
    receipt = await commands.place(place("corr-place"))

    line = logs.one("probe.risk_checked")
    assert line["order_id"] == receipt.order_id
    assert (line["correlation_id"], line["user_id"], line["account_id"]) == (
        "corr-place",
        "alice",
        "acc-1",
    )
    assert structlog.contextvars.get_contextvars() == {}


async def test_canceling_logs_in_the_cancels_context(
    commands: OrderCommands, logs: JsonLines
) -> None:
    receipt = await commands.place(place("corr-place"))

    await commands.cancel(
        CancelOrder(
            account_id="acc-1",
            order_id=receipt.order_id,
            correlation_id="corr-cancel",
            user_id="alice",
        )
    )

    line = logs.one("probe.owner_checked")
    assert (line["correlation_id"], line["user_id"]) == ("corr-cancel", "alice")


async def test_a_request_context_around_the_command_is_given_back(
    commands: OrderCommands, logs: JsonLines
) -> None:
    """Inside a request the command rebinds the same ids; a command without a user (a
    strategy's) shows none, and the request's context is as before once it returns."""
    with log_context(correlation_id="the-request", user_id="alice"):
        await commands.place(place("the-request"))
        await commands.place(place("corr-strategy", user_id=None))
        after = structlog.contextvars.get_contextvars()

    by_correlation = {line["correlation_id"]: line for line in logs.named("probe.risk_checked")}
    assert by_correlation["the-request"]["user_id"] == "alice"
    assert "user_id" not in by_correlation["corr-strategy"]
    assert after == {"correlation_id": "the-request", "user_id": "alice"}

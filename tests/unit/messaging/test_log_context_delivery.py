"""Under the delivery runner a handler's log lines carry its event's correlation id and
account, never a user id inherited from whoever published; a batch handler's carry none.

Published from inside a bound context on purpose: the memory bus hands events out on a task
started by the publisher (or by the previous event's ack), which inherits its context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime

import pytest
import structlog

from tests.helpers import eventually
from tests.unit.observability.json_logs import JsonLines, captured_json_logs
from tradeloom.domain.events import Event, OrderAccepted, new_event
from tradeloom.messaging.memory import MemoryBus
from tradeloom.messaging.port import ConsumerOptions, RetryPolicy
from tradeloom.messaging.topics import ORDER_EVENTS
from tradeloom.observability.logging import CONTEXT_KEYS, log_context

TOPIC = ORDER_EVENTS.name
FAST = ConsumerOptions(
    retry=RetryPolicy(max_attempts=3, first_backoff=0.01, max_backoff=0.02), ack_wait=1.0
)
log = structlog.get_logger("tests.messaging")


@pytest.fixture
def logs() -> Iterator[JsonLines]:
    with captured_json_logs("consumer") as lines:
        yield lines


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    bus = MemoryBus()
    await bus.start()
    yield bus
    await bus.close()


def accepted(seq: int, *, account: str | None = "acc-1") -> Event:
    return new_event(
        OrderAccepted(order_id=f"o-{seq}", broker_order_id=str(seq)),
        occurred_at=datetime.now(UTC),
        correlation_id=f"corr-{seq}",
        account_id=account,
    )


async def publish_as_a_request(bus: MemoryBus, *events: Event) -> None:
    with log_context(correlation_id="the-request", user_id="alice", account_id="acc-other"):
        await bus.publish_many(TOPIC, [(event, "acc-1") for event in events])


async def test_a_handlers_lines_carry_its_events_correlation_id_and_account(
    bus: MemoryBus, logs: JsonLines
) -> None:
    async def handler(event: Event) -> None:
        log.info("probe.handled", event_id=event.id)

    await bus.subscribe(TOPIC, "probe", handler, FAST)
    first, second = accepted(1), accepted(2, account=None)
    await publish_as_a_request(bus, first, second)

    await eventually(lambda: len(logs.named("probe.handled")) == 2)
    lines = {line["event_id"]: line for line in logs.named("probe.handled")}
    assert lines[first.id]["correlation_id"] == "corr-1"
    assert lines[first.id]["account_id"] == "acc-1"
    assert lines[second.id]["correlation_id"] == "corr-2"
    assert "account_id" not in lines[second.id], "an event without an account names none"
    for line in lines.values():
        assert "user_id" not in line, f"the publisher's user leaked into a handler: {line}"
    assert structlog.contextvars.get_contextvars() == {}


async def test_a_failing_handlers_retries_are_logged_in_its_events_context(
    bus: MemoryBus, logs: JsonLines
) -> None:
    attempts: list[int] = []

    async def flaky(event: Event) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("once")

    await bus.subscribe(TOPIC, "flaky", flaky, FAST)
    await publish_as_a_request(bus, accepted(7))

    await eventually(lambda: bus.stats.handled == 1)
    failed = logs.one("bus.handler_failed")
    assert (failed["correlation_id"], failed["account_id"]) == ("corr-7", "acc-1")
    assert "user_id" not in failed


async def test_a_batch_handlers_lines_carry_no_one_events_context(
    bus: MemoryBus, logs: JsonLines
) -> None:
    async def batch(events: Sequence[Event]) -> None:
        log.info("probe.batch", size=len(events))

    await bus.subscribe_batch(TOPIC, "batch", batch, FAST)
    await publish_as_a_request(bus, accepted(1), accepted(2))

    await eventually(lambda: bus.stats.handled == 2)
    for line in logs.named("probe.batch"):
        assert not set(CONTEXT_KEYS) & set(line), line

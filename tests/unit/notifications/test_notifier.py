"""The notifier on the in-memory bus and cache: every order and position event reaches its
owner's channel once, numbered per owner, and nobody else's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from tests.helpers import eventually
from tests.unit.notifications.builders import NOW, Accounts, Monotonic, filled, position, submitted
from tradeloom.cache.memory import MemoryCache
from tradeloom.domain.events import Event, OrderCancelRejected, OrderReplaceRejected, new_event
from tradeloom.domain.time import ManualClock
from tradeloom.messaging.memory import MemoryBroker, MemoryBus
from tradeloom.messaging.topics import ORDER_COMMANDS, ORDER_EVENTS, POSITION_UPDATED
from tradeloom.notifications import MemoizedOwners, Notifier, user_channel
from tradeloom.observability.metrics import Metrics


class FlakyCache(MemoryCache):
    """A memory cache whose next ``failures`` publishes fail, as a dropped connection would."""

    def __init__(self) -> None:
        super().__init__(clock=Monotonic())
        self.failures = 0

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if self.failures and messages:
            self.failures -= 1
            raise ConnectionError("cache unreachable")
        await super().publish_many(messages)


@dataclass
class World:
    bus: MemoryBus
    cache: FlakyCache
    accounts: Accounts
    notifier: Notifier
    metrics: Metrics
    received: dict[str, list[dict[str, object]]] = field(default_factory=dict)

    async def listen(self, owner: str) -> None:
        inbox = self.received.setdefault(owner, [])
        await self.cache.subscribe(
            user_channel(owner), lambda _, raw: inbox.append(json.loads(raw))
        )

    async def publish(self, topic: str, *events: Event) -> None:
        for event in events:
            assert event.account_id is not None
            await self.bus.publish(topic, event, key=event.account_id)

    def ids(self, owner: str) -> list[int]:
        return [int(str(message["id"])) for message in self.received.get(owner, [])]

    def sent(self, kind: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "tradeloom_notifications_sent_total", {"kind": kind}
        )
        return value or 0.0


def refused(
    kind: type[OrderCancelRejected | OrderReplaceRejected], account: str, order: str
) -> Event:
    payload = kind(order_id=order, reason="too late")
    return new_event(payload, occurred_at=NOW, correlation_id="corr-1", account_id=account)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    bus = MemoryBus(MemoryBroker())
    await bus.start()
    cache = FlakyCache()
    accounts = Accounts({"A1": "alice", "A2": "alice", "B1": "bob"})
    metrics = Metrics()
    notifier = Notifier(bus, cache, MemoizedOwners(accounts), ManualClock(NOW), metrics=metrics)
    await notifier.start()
    world = World(bus, cache, accounts, notifier, metrics)
    await world.listen("alice")
    await world.listen("bob")
    yield world
    await notifier.stop()
    await bus.close()


async def test_order_and_position_events_reach_the_owner_numbered_1_2_3(world: World) -> None:
    await world.publish(ORDER_COMMANDS.name, submitted("A1"))
    await world.publish(ORDER_EVENTS.name, filled("A1"))
    await world.publish(POSITION_UPDATED.name, position("A2"))
    await eventually(lambda: len(world.ids("alice")) == 3, message="three messages for alice")
    assert sorted(world.ids("alice")) == [1, 2, 3]
    assert {m["type"] for m in world.received["alice"]} == {
        "order.submitted",
        "order.filled",
        "position.updated",
    }
    assert (world.sent("order"), world.sent("position")) == (2.0, 1.0)
    lags = world.metrics.registry.get_sample_value(
        "tradeloom_projection_lag_seconds_count", {"group": "notifications"}
    )
    assert lags == 3.0


async def test_a_refused_cancel_and_a_refused_amend_reach_the_owner_told_apart(
    world: World,
) -> None:
    await world.publish(
        ORDER_EVENTS.name,
        refused(OrderCancelRejected, "A1", "o1"),
        refused(OrderReplaceRejected, "A1", "o2"),
    )
    await eventually(lambda: len(world.ids("alice")) == 2, message="two refusals for alice")
    assert [(m["type"], m["data"]) for m in world.received["alice"]] == [
        ("order.cancel_rejected", {"order_id": "o1", "reason": "too late"}),
        ("order.replace_rejected", {"order_id": "o2", "reason": "too late"}),
    ]
    assert world.sent("order") == 2.0


async def test_a_user_receives_only_their_own_messages(world: World) -> None:
    await world.publish(ORDER_EVENTS.name, filled("A1", "o1"), filled("B1", "o2"))
    await world.publish(ORDER_EVENTS.name, filled("B1", "o3"))
    await eventually(lambda: len(world.ids("bob")) == 2 and len(world.ids("alice")) == 1)
    assert [m["account_id"] for m in world.received["alice"]] == ["A1"]
    assert [m["account_id"] for m in world.received["bob"]] == ["B1", "B1"]
    assert world.ids("bob") == [1, 2]


async def test_a_message_carries_the_event_with_exact_decimals_and_utc_times(
    world: World,
) -> None:
    event = filled("A1")
    await world.publish(ORDER_EVENTS.name, event)
    await eventually(lambda: len(world.ids("alice")) == 1)
    assert world.received["alice"][0] == {
        "id": 1,
        "type": "order.filled",
        "event_id": event.id,
        "account_id": "A1",
        "correlation_id": "corr-1",
        "occurred_at": "2026-11-25T14:30:00Z",
        "data": {
            "order_id": "o1",
            "fill_id": "f-o1",
            "symbol": "AAPL",
            "side": "buy",
            "quantity": "10",
            "price": "187.20",
            "fee": "0.35",
            "filled_at": "2026-11-25T14:30:00Z",
            "cumulative_quantity": "10",
            "leaves_quantity": "0",
        },
    }


async def test_a_redelivered_event_is_published_once(world: World) -> None:
    event = position("A1")
    await world.notifier.handle([event])
    await world.notifier.handle([event, submitted("A1")])  # the same event again, then a new one
    assert world.ids("alice") == [1, 2]
    assert await world.notifier.replay.current_id("alice") == 2


async def test_a_batch_whose_publish_failed_is_retried_with_the_same_ids(world: World) -> None:
    world.cache.failures = 1
    await world.publish(ORDER_EVENTS.name, filled("A1", "o1"), filled("A1", "o2"))
    await eventually(lambda: len(world.ids("alice")) == 2, message="both fills after the retry")
    assert world.ids("alice") == [1, 2]
    assert world.cache.failures == 0
    assert world.sent("order") == 2.0


async def test_an_event_of_an_unknown_account_is_skipped_and_the_rest_are_sent(
    world: World,
) -> None:
    await world.notifier.handle([submitted("ZZ"), submitted("A1")])
    assert world.ids("alice") == [1]
    assert world.notifier.skipped == 1


async def test_unreadable_accounts_fail_the_batch_before_anything_is_appended(
    world: World,
) -> None:
    world.accounts.down = True
    with pytest.raises(ConnectionError):
        await world.notifier.handle([submitted("A1")])
    assert await world.notifier.replay.current_id("alice") == 0
    world.accounts.down = False
    await world.notifier.handle([submitted("A1")])
    assert world.ids("alice") == [1]

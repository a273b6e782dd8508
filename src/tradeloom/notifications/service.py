"""The notifier: every order and position event, pushed to its owner's stream.

It consumes ``order.commands`` (submitted, cancel and amend requests), ``order.events`` (all)
and ``position.updated`` as one consumer group, in batches, and for each batch:

1. routes every event to the owner of its account (:class:`OwnerLookup`, memoized);
2. appends the batch's messages to the replay buffer in ONE atomic step: each gets its owner's
   next id, or, when its event was appended before (a redelivery), its first id back;
3. publishes the new messages to their owners' channels (:func:`user_channel`) in one round
   trip, in id order per owner, then marks them sent.

Guarantees: at-least-once. A batch that fails anywhere is redelivered; the replay buffer hands
its events their first ids again and republishes only messages whose publish was not
confirmed, so a redelivery never makes a second message and, unless a crash falls between a
publish and its confirmation, never sends one twice (a stream drops ids it already sent).
Events of one account keep their order within a topic (the bus's key), so their ids do too;
across topics, or across notifier processes, messages of one owner may be published out of id
order, which :class:`~tradeloom.notifications.stream.UserStream` puts right.

An event whose account is unknown is logged and skipped, not retried: the risk check refuses
an order for an account it cannot read, so every order event's account was committed before
the event existed, and the notifier reads the same primary database. An unknown account is
therefore never "not visible yet" but an anomaly that retrying would not cure, while a
retried event would hold back its account's later events for the ~80 minutes of
``PERSISTENT_RETRY``. An account that cannot be READ (database down) raises instead, and the
batch is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from tradeloom.cache.port import Cache
from tradeloom.domain.events import Event
from tradeloom.domain.time import Clock
from tradeloom.messaging.port import (
    PERSISTENT_RETRY,
    VIEW_MAX_WAIT,
    ConsumerOptions,
    EventBus,
    Subscription,
)
from tradeloom.messaging.topics import ORDER_COMMANDS, ORDER_EVENTS, POSITION_UPDATED
from tradeloom.notifications.messages import Kind, kind_of, notification_body, user_channel
from tradeloom.notifications.owners import OwnerLookup
from tradeloom.notifications.replay_buffer import Entry, ReplayBuffer
from tradeloom.observability.metrics import Metrics

log = structlog.get_logger("tradeloom.notifications")

NOTIFIED_TOPICS = (ORDER_COMMANDS.name, ORDER_EVENTS.name, POSITION_UPDATED.name)
MAX_BATCH = 200


@dataclass(frozen=True, slots=True)
class _Routed:
    event: Event
    kind: Kind
    entry: Entry


class Notifier:
    """Pushes order and position events to their owners' streams (see the module docstring).

    ``replay`` defaults to a :class:`ReplayBuffer` on ``cache`` with the default capacity and
    TTL; pass one to change them (every notifier and stream of a deployment must agree).
    With ``metrics``, every published message counts in ``notifications_sent{kind}`` and its
    delay since the event occurred (by ``clock``) in ``projection_lag_seconds{group}``.
    """

    def __init__(
        self,
        bus: EventBus,
        cache: Cache,
        owners: OwnerLookup,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        group: str = "notifications",
        replay: ReplayBuffer | None = None,
    ) -> None:
        self._bus = bus
        self._cache = cache
        self._owners = owners
        self._clock = clock
        self._metrics = metrics
        self._group = group
        self.replay = replay or ReplayBuffer(cache)
        self._subscriptions: list[Subscription] = []
        self.skipped = 0  # events with no known owner, or of a type users are not told about

    async def start(self) -> None:
        options = ConsumerOptions(
            retry=PERSISTENT_RETRY, max_batch=MAX_BATCH, max_wait=VIEW_MAX_WAIT
        )
        for name in NOTIFIED_TOPICS:
            subscription = await self._bus.subscribe_batch(name, self._group, self.handle, options)
            self._subscriptions.append(subscription)

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.stop()

    async def handle(self, events: Sequence[Event]) -> None:
        """Append and publish one batch; raises (for a retry) when the cache or the accounts
        cannot be reached."""
        routed: list[_Routed] = []
        for event in events:
            item = await self._route(event)
            if item is not None:
                routed.append(item)
        appended = await self.replay.append_many([item.entry for item in routed])
        sent = [(item, a) for item, a in zip(routed, appended, strict=True) if a.publish]
        await self._cache.publish_many([(user_channel(a.owner), a.message) for _, a in sent])
        await self.replay.mark_sent([a for _, a in sent])
        self._record([item for item, _ in sent])

    async def _route(self, event: Event) -> _Routed | None:
        """The message for ``event``, or None when no user is told about it."""
        kind, account_id = kind_of(event), event.account_id
        if kind is None or account_id is None:
            self.skipped += 1
            log.warning("notifications.not_for_users", event_id=event.id, type=event.type)
            return None
        owner = await self._owners.owner_of(account_id)
        if owner is None:
            self.skipped += 1
            log.warning(
                "notifications.unknown_account",
                event_id=event.id,
                type=event.type,
                account_id=account_id,
            )
            return None
        return _Routed(event, kind, Entry(owner, event.id, notification_body(event, account_id)))

    def _record(self, sent: Sequence[_Routed]) -> None:
        if self._metrics is None:
            return
        now = self._clock.now()
        for item in sent:
            self._metrics.notifications_sent.labels(kind=item.kind.value).inc()
            lag = max((now - item.event.occurred_at).total_seconds(), 0.0)
            self._metrics.projection_lag_seconds.labels(group=self._group).observe(lag)

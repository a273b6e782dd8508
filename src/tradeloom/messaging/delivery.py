"""Handing delivered events to handlers: retries with backoff, batch splitting, dead letters.

Both adapters deliver through :class:`DeliveryRunner`, so the port's failure semantics live in
one place and cannot drift between the in-memory bus and NATS:

* An event is acknowledged only after its handler returned (or after it was dead-lettered).
* A handler that raises is retried in place after ``RetryPolicy.backoff(attempt)``; later
  events of the same partition wait meanwhile, which is what keeps per-key order (the retried
  event is still the oldest unacknowledged one). While it waits, the pending deliveries are
  kept alive so the broker does not presume the consumer dead and hand them to someone else.
* Attempts that ended without an ack (a consumer that died, an ack deadline that passed) count:
  a delivery arrives with ``prior_attempts`` and the runner continues from there.
* When attempts run out, a ``DeadLettered`` event carrying the original bytes is published to
  the ``dead_letter`` topic, then the original is acknowledged. If that publish fails, nothing
  is acknowledged and the broker redelivers later: the event is never dropped silently.
* A failed batch is retried one event at a time, so only the bad event is dead-lettered.

Handler failures are logged with ``structlog`` and counted in :class:`DeliveryStats`.
Everything here runs on the event loop of the consuming bus; nothing is thread-safe.

Log context: while one event is handled (retries and dead-lettering included), the log lines
carry its ``correlation_id`` and ``account_id``, and no ``user_id`` (an event does not name
one; one inherited from whatever started the delivery task would be someone else's). While a
batch handler runs, its lines carry none of the three: a batch mixes events of many requests,
so a handler that logs about one event names its ids itself. Each binding is reset when the
event (or the batch call) is done; it costs about 1.6 µs per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import structlog

from tradeloom.domain.events import DeadLettered, Event, decode_event, new_event
from tradeloom.domain.ids import new_id
from tradeloom.domain.time import Clock
from tradeloom.messaging.port import BatchHandler, ConsumerOptions, EventHandler, RetryPolicy
from tradeloom.messaging.topics import DEAD_LETTER
from tradeloom.observability.logging import bind_log_context, log_context, reset_log_context

_log = structlog.get_logger(__name__)

EACH_DEFAULTS = ConsumerOptions()  # the port's defaults for subscribe and subscribe_batch
BATCH_DEFAULTS = ConsumerOptions(max_batch=100)

Settle = Callable[[], Awaitable[None]]
DeadLetterPublisher = Callable[[Event, str], Awaitable[None]]


@dataclass(slots=True)
class Delivery:
    """One delivered event: its bytes, how often it was delivered before, how to settle it.

    ``ack`` tells the broker the event is done; ``keep_alive`` tells it the consumer is still
    working on it (resets the ack deadline).
    """

    data: bytes
    key: str
    prior_attempts: int
    ack: Settle
    keep_alive: Settle


@dataclass(slots=True)
class DeliveryStats:
    """Counters of one bus, for metrics and tests. Only ever incremented."""

    handled: int = 0
    handler_failures: int = 0
    batch_failures: int = 0
    dead_lettered: int = 0
    by_group: dict[str, int] = field(default_factory=dict)

    def failure(self, group: str) -> None:
        self.handler_failures += 1
        self.by_group[group] = self.by_group.get(group, 0) + 1


class DeliveryRunner:
    """Runs one group's handler over deliveries of one topic, with the port's failure rules."""

    def __init__(
        self,
        *,
        topic: str,
        group: str,
        retry: RetryPolicy,
        keep_alive_every: float,
        dead_letter: DeadLetterPublisher,
        stats: DeliveryStats,
        clock: Clock,
    ) -> None:
        self._topic = topic
        self._group = group
        self._retry = retry
        self._keep_alive_every = max(0.01, keep_alive_every)
        self._dead_letter = dead_letter
        self._stats = stats
        self._clock = clock

    async def run_each(self, deliveries: Sequence[Delivery], handler: EventHandler) -> None:
        """Handle ``deliveries`` strictly in order, one at a time, each acked before the next."""
        for index, delivery in enumerate(deliveries):
            await self._run_one(delivery, deliveries[index + 1 :], handler)

    async def run_batch(self, deliveries: Sequence[Delivery], handler: BatchHandler) -> None:
        """Hand ``deliveries`` over as one batch; if it fails, retry them one by one."""
        if not await self.try_batch(deliveries, handler):
            await self.run_each(deliveries, _single(handler))

    async def try_batch(self, deliveries: Sequence[Delivery], handler: BatchHandler) -> bool:
        """Hand ``deliveries`` over as one batch and ack them all: True if the handler returned.

        False, with nothing acked, when the handler raised or an event cannot be decoded: the
        caller retries them (:meth:`run_batch` one by one). The failed batch counts as no
        event's attempt.
        """
        if not deliveries:
            return True
        events = [_decode(delivery.data) for delivery in deliveries]
        if any(event is None for event in events):
            return False
        # No one event's context: hide whatever the delivering task inherited.
        tokens = bind_log_context(correlation_id=None, user_id=None, account_id=None)
        try:
            await handler([event for event in events if event is not None])
        except Exception as exc:
            self._stats.batch_failures += 1
            self._stats.failure(self._group)
            _log.warning(
                "bus.batch_failed",
                topic=self._topic,
                group=self._group,
                size=len(events),
                error=repr(exc),
            )
            return False
        finally:
            reset_log_context(tokens)
        for delivery in deliveries:
            await delivery.ack()
        self._stats.handled += len(deliveries)
        return True

    async def _run_one(
        self, delivery: Delivery, waiting: Sequence[Delivery], handler: EventHandler
    ) -> None:
        event = await self._decode_or_dead_letter(delivery)
        if event is None:
            return
        tokens = bind_log_context(
            correlation_id=event.correlation_id, user_id=None, account_id=event.account_id
        )
        try:
            await self._handle(event, delivery, waiting, handler)
        finally:
            reset_log_context(tokens)

    async def _handle(
        self, event: Event, delivery: Delivery, waiting: Sequence[Delivery], handler: EventHandler
    ) -> None:
        attempt = delivery.prior_attempts + 1
        while True:
            try:
                await handler(event)
            except Exception as exc:
                self._stats.failure(self._group)
                _log.warning(
                    "bus.handler_failed",
                    topic=self._topic,
                    group=self._group,
                    event_id=event.id,
                    event_type=event.type,
                    attempt=attempt,
                    error=repr(exc),
                )
                if attempt >= self._retry.max_attempts:
                    await self._send_to_dead_letter(delivery, event, exc, attempt)
                    return
                await self._pause(self._retry.backoff(attempt), [delivery, *waiting])
                attempt += 1
                continue
            await delivery.ack()
            self._stats.handled += 1
            return

    async def _pause(self, seconds: float, pending: Sequence[Delivery]) -> None:
        """Back off for ``seconds`` while telling the broker the pending events are in hand."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            for delivery in pending:
                await delivery.keep_alive()
            await asyncio.sleep(min(remaining, self._keep_alive_every))

    async def _decode_or_dead_letter(self, delivery: Delivery) -> Event | None:
        try:
            return decode_event(delivery.data)
        except msgspec.DecodeError as exc:
            # Bytes of no known event: no one's context applies, whatever this task inherited.
            with log_context(correlation_id=None, user_id=None, account_id=None):
                _log.error("bus.undecodable", topic=self._topic, group=self._group, error=repr(exc))
                await self._send_to_dead_letter(delivery, None, exc, delivery.prior_attempts + 1)
            return None

    async def _send_to_dead_letter(
        self, delivery: Delivery, event: Event | None, error: Exception, attempts: int
    ) -> None:
        if self._topic == DEAD_LETTER.name:
            # A dead letter that cannot be handled has nowhere further to go: log loudly, ack.
            _log.error("bus.dead_letter_unhandled", group=self._group, error=repr(error))
        else:
            payload = DeadLettered(
                topic=self._topic,
                group=self._group,
                reason="HANDLER_FAILED" if event is not None else "UNDECODABLE",
                error=repr(error),
                attempts=attempts,
                original_event_id=event.id if event is not None else "",
                original_type=event.type if event is not None else "",
                original=delivery.data,
            )
            letter = new_event(
                payload,
                occurred_at=self._clock.now(),
                correlation_id=event.correlation_id if event is not None else new_id(),
                causation_id=event.id if event is not None else None,
                account_id=event.account_id if event is not None else None,
            )
            await self._dead_letter(letter, delivery.key)
            _log.error(
                "bus.dead_lettered",
                topic=self._topic,
                group=self._group,
                event_id=payload.original_event_id,
                attempts=attempts,
                error=payload.error,
            )
        self._stats.dead_lettered += 1
        await delivery.ack()


def _decode(data: bytes) -> Event | None:
    try:
        return decode_event(data)
    except msgspec.DecodeError:
        return None


def _single(handler: BatchHandler) -> EventHandler:
    async def handle_one(event: Event) -> None:
        await handler([event])

    return handle_one

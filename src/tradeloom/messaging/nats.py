"""The NATS JetStream event bus (server 2.9+): durable, replicated, partitioned per key.

Layout (``P`` = ``STREAM_PREFIX``, default ``TL``):

* **One stream per topic**, ``P_ORDER_EVENTS`` for ``order.events``, taking the subjects
  ``p.order_events.<partition>``. A key's partition is ``crc32(key) % partitions``
  (:func:`~tradeloom.messaging.partitioning.partition_of`), identical in every process.
  The stream's ``max_age`` is the topic's retention, its replicas
  ``min(topic.replicas, max_replicas)``, its duplicate window at least two minutes. Streams are
  created at :meth:`NatsBus.start`, or updated if they exist with another configuration.
* **Publishing** sets ``Nats-Msg-Id`` to the event id, so JetStream drops a republished event
  within the duplicate window, and waits for the stream's ack (for replicated streams the ack
  comes once the replicas have it). ``publish_many`` pipelines: every event is written to the
  connection at once, at most ``publish_window`` acks outstanding, and it returns when all are
  acked or raises :class:`PublishFailed` if any is not. Written in order on one connection, the
  events of a key are stored in the order given. For ``LEADER_ACK`` topics (loss tolerable,
  ``market.price``) only the LAST event of a ``publish_many`` asks for an ack; the others are
  plain NATS publishes on the same connection. The stream stores what one connection sends in
  order, so that one ack means the stream has processed the whole batch (about 6x less client
  CPU per event than one ack future each). What it gives up: an earlier event the stream
  rejected on its own (not a duplicate: a storage failure) would go unnoticed, which such a
  topic tolerates by definition.
* **Consuming**: per group and partition one durable pull consumer; a member fetches only the
  partitions it leases (:mod:`~tradeloom.messaging.nats_lease`, a KV bucket ``P_LEASES``
  whose TTL is ``lease_ttl``). That is what keeps per-key order across processes without the
  pinned consumers of NATS 2.11. See :mod:`~tradeloom.messaging.nats_consumer` for fetching,
  retries and dead letters. A batch subscription hands what its partitions fetched at about
  the same time to the handler as one batch (:mod:`~tradeloom.messaging.batch_merge`), so a
  trickle spread over many partitions does not cost one handler call per partition.
* **Guarantees and limits**: at-least-once; duplicates are possible when a member stalls past
  ``ack_wait`` or loses its lease mid-batch, and when a ``publish_many`` is retried after a
  partial failure (the dedup window absorbs the latter). A failed ``publish_many`` may have
  stored a later event of a key without an earlier one; the caller retries the whole batch.

Everything runs on one event loop; a bus is not shared between threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence

import nats
import structlog
from nats.aio.client import Client
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError, ServerError
from nats.js.kv import KeyValue

from tradeloom.domain.events import Event, encode_event
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.messaging.batch_merge import MergedBatches
from tradeloom.messaging.delivery import (
    BATCH_DEFAULTS,
    EACH_DEFAULTS,
    Delivery,
    DeliveryRunner,
    DeliveryStats,
)
from tradeloom.messaging.nats_consumer import (
    KEY_HEADER,
    GroupMember,
    RunDeliveries,
    consumer_config,
)
from tradeloom.messaging.nats_lease import PartitionLeases, StartWorker, StopWorker
from tradeloom.messaging.partitioning import partition_of
from tradeloom.messaging.port import BatchHandler, ConsumerOptions, EventHandler, Subscription
from tradeloom.messaging.topics import DEAD_LETTER, TOPICS, Durability, Topic, topic

_log = structlog.get_logger(__name__)

_STREAM_NAME_IN_USE = 10058
_STREAM_CREATE_ATTEMPTS = 5


class PublishFailed(Exception):
    """Some events of a ``publish_many`` were not acknowledged; retry the whole batch."""


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def stream_name(prefix: str, topic_name: str) -> str:
    return _token(f"{prefix}_{topic_name}").upper()


def lease_bucket(prefix: str) -> str:
    return _token(f"{prefix}_LEASES").upper()


class NatsBus:
    """An :class:`~tradeloom.messaging.port.EventBus` on NATS JetStream.

    ``stats`` counts handled events, handler failures and dead letters of this bus.
    """

    def __init__(
        self,
        url: str,
        *,
        partitions: int = 8,
        max_replicas: int = 1,
        stream_prefix: str = "TL",
        lease_ttl: float = 5.0,
        poll_interval: float = 1.0,
        publish_window: int = 512,
        publish_timeout: float = 10.0,
        dedup_window: float = 120.0,
        clock: Clock | None = None,
    ) -> None:
        if dedup_window < 120.0:
            raise ValueError("the dedup window must be at least two minutes")
        self.stats = DeliveryStats()
        self._url = url
        self._partitions = partitions
        self._max_replicas = max_replicas
        self._prefix = stream_prefix
        self._subject_prefix = _token(stream_prefix).lower()
        self._lease_ttl = lease_ttl
        self._poll_interval = poll_interval
        self._publish_window = publish_window
        self._publish_timeout = publish_timeout
        self._dedup_window = dedup_window
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._members: list[GroupMember] = []
        self._subject_cache: dict[str, list[str]] = {}

    async def start(self) -> None:
        self._nc = await nats.connect(self._url, name=f"tradeloom-{self._prefix}")
        self._js = self._nc.jetstream(publish_async_max_pending=self._publish_window)
        for each in TOPICS.values():
            await self._ensure_stream(each)
        self._kv = await self._ensure_lease_bucket()

    async def close(self, grace: float = 10.0) -> None:
        """Stop every member (in-flight events finish and are acked, leases are released),
        then drain the connection. Shutdown is bounded: a member still busy after ``grace``
        seconds is aborted like a crashed process (its unacked events go back to the server
        after ``ack_wait``)."""
        members, self._members = self._members, []
        for member in members:
            try:
                await asyncio.wait_for(member.stop(), grace)
            except TimeoutError:
                _log.warning("bus.stop_timed_out", grace=grace)
                await member.abort()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), grace)
            except TimeoutError:
                _log.warning("bus.drain_timed_out", grace=grace)
                await self._nc.close()

    async def abort(self) -> None:
        """Vanish like a crashed process: nothing is acked or released, leases lapse."""
        members, self._members = self._members, []
        for member in members:
            await member.abort()
        if self._nc is not None:
            await self._nc.close()

    def subject(self, topic_name: str, key: str) -> str:
        return self._partition_subject(topic_name, partition_of(key, self._partitions))

    async def publish(self, topic: str, event: Event, key: str) -> None:
        js = self._jetstream()
        name = _topic(topic).name
        await js.publish(
            self.subject(name, key),
            encode_event(event),
            timeout=self._publish_timeout,
            headers={"Nats-Msg-Id": event.id, KEY_HEADER: key},
        )

    async def publish_many(self, topic: str, items: Sequence[tuple[Event, str]]) -> None:
        js = self._jetstream()
        described = _topic(topic)
        name = described.name
        encoded = [(event.id, encode_event(event), key) for event, key in items]
        if described.durability is Durability.LEADER_ACK and len(encoded) > 1:
            await self._publish_acking_last(name, encoded)
            return
        acks: list[asyncio.Future[api.PubAck]] = []
        loop = asyncio.get_running_loop()
        try:
            # No per-message wait_stall: it costs a task per message and a socket write each.
            # One timeout, pushed back after every message, bounds a stalled ack window.
            subjects = self._subjects(name)
            async with asyncio.timeout(self._publish_timeout) as stalled:
                for index, (event_id, data, key) in enumerate(encoded):
                    if index % 64 == 0:
                        stalled.reschedule(loop.time() + self._publish_timeout)
                    # Buffered for the socket now; the future resolves when the stream has it.
                    acks.append(
                        await js.publish_async(
                            subjects[partition_of(key, self._partitions)],
                            data,
                            headers={"Nats-Msg-Id": event_id, KEY_HEADER: key},
                        )
                    )
        finally:
            await self._settle(acks, expected=len(encoded))

    async def _publish_acking_last(self, name: str, encoded: list[tuple[str, bytes, str]]) -> None:
        """Publish all but the last event without a reply subject, then the last one acked."""
        nc = self._nc
        assert nc is not None
        subjects = self._subjects(name)
        *rest, (last_id, last_data, last_key) = encoded
        for event_id, data, key in rest:
            await nc.publish(
                subjects[partition_of(key, self._partitions)],
                data,
                headers={"Nats-Msg-Id": event_id, KEY_HEADER: key},
            )
        try:
            await self._jetstream().publish(
                subjects[partition_of(last_key, self._partitions)],
                last_data,
                timeout=self._publish_timeout,
                headers={"Nats-Msg-Id": last_id, KEY_HEADER: last_key},
            )
        except Exception as exc:
            raise PublishFailed(
                f"the stream did not acknowledge a batch of {len(encoded)} events: {exc!r}"
            ) from exc

    async def _settle(self, acks: list[asyncio.Future[api.PubAck]], expected: int) -> None:
        if not acks:
            if expected:
                raise PublishFailed(f"0 of {expected} events were sent")
            return
        done, pending = await asyncio.wait(acks, timeout=self._publish_timeout)
        for future in pending:
            future.cancel()
        errors = [error for future in done if (error := future.exception()) is not None]
        if errors or pending or len(acks) < expected:
            unacked = len(errors) + len(pending) + expected - len(acks)
            raise PublishFailed(
                f"{unacked} of {expected} events were not acknowledged"
                + (f"; first error: {errors[0]!r}" if errors else "")
            ) from (errors[0] if errors else None)

    async def subscribe(
        self,
        topic: str,
        group: str,
        handler: EventHandler,
        options: ConsumerOptions = EACH_DEFAULTS,
    ) -> Subscription:
        runner = self._runner(topic, group, options)

        async def run(deliveries: list[Delivery]) -> None:
            await runner.run_each(deliveries, handler)

        return await self._join(topic, group, options, run)

    async def subscribe_batch(
        self,
        topic: str,
        group: str,
        handler: BatchHandler,
        options: ConsumerOptions = BATCH_DEFAULTS,
    ) -> Subscription:
        runner = self._runner(topic, group, options)

        async def try_merged(deliveries: list[Delivery]) -> bool:
            return await runner.try_batch(deliveries, handler)

        async def run_alone(deliveries: list[Delivery]) -> None:
            await runner.run_batch(deliveries, handler)

        merged = MergedBatches(
            try_merged, run_alone, options.max_batch, keep_alive_every=options.ack_wait / 3
        )
        return await self._join(topic, group, options, merged.run, on_abort=merged.abort)

    async def ping(self) -> None:
        await self._jetstream().account_info()

    def _runner(self, topic_name: str, group: str, options: ConsumerOptions) -> DeliveryRunner:
        return DeliveryRunner(
            topic=_topic(topic_name).name,
            group=group,
            retry=options.retry,
            keep_alive_every=options.ack_wait / 3,
            dead_letter=self._publish_dead_letter,
            stats=self.stats,
            clock=self._clock,
        )

    async def _publish_dead_letter(self, letter: Event, key: str) -> None:
        await self.publish(DEAD_LETTER.name, letter, key)

    async def _join(
        self,
        topic_name: str,
        group: str,
        options: ConsumerOptions,
        run: RunDeliveries,
        *,
        on_abort: Callable[[], None] | None = None,
    ) -> GroupMember:
        js = self._jetstream()
        name = _topic(topic_name).name
        stream = stream_name(self._prefix, name)
        durables = [_token(f"{group}_{p}") for p in range(self._partitions)]
        await asyncio.gather(
            *(
                self._ensure_consumer(
                    stream, consumer_config(durable, self._partition_subject(name, p), options)
                )
                for p, durable in enumerate(durables)
            )
        )
        kv = self._kv
        assert kv is not None

        def make_leases(start: StartWorker, stop: StopWorker) -> PartitionLeases:
            return PartitionLeases(
                js=js,
                kv=kv,
                bucket=lease_bucket(self._prefix),
                scope=f"{_token(name)}.{_token(group)}",
                partitions=self._partitions,
                ttl=self._lease_ttl,
                start_worker=start,
                stop_worker=stop,
            )

        nc = self._nc
        assert nc is not None
        member = GroupMember(
            nc=nc,
            stream=stream,
            durables=durables,
            options=options,
            poll_interval=self._poll_interval,
            run=run,
            make_leases=make_leases,
            on_abort=on_abort,
        )
        await member.start()
        self._members.append(member)
        return member

    def _partition_subject(self, topic_name: str, partition: int) -> str:
        return self._subjects(topic_name)[partition]

    def _subjects(self, topic_name: str) -> list[str]:
        """The subject of every partition of a topic (computed once per topic)."""
        subjects = self._subject_cache.get(topic_name)
        if subjects is None:
            base = f"{self._subject_prefix}.{_token(topic_name)}"
            subjects = [f"{base}.{partition}" for partition in range(self._partitions)]
            self._subject_cache[topic_name] = subjects
        return subjects

    async def _ensure_stream(self, each: Topic) -> None:
        js = self._jetstream()
        config = api.StreamConfig(
            name=stream_name(self._prefix, each.name),
            subjects=[f"{self._subject_prefix}.{_token(each.name)}.*"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=each.retention.total_seconds(),
            num_replicas=min(each.replicas, self._max_replicas),
            duplicate_window=min(self._dedup_window, each.retention.total_seconds()),
        )
        for attempt in range(1, _STREAM_CREATE_ATTEMPTS + 1):
            try:
                await js.add_stream(config)
                return
            except BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                await js.update_stream(config)
                _log.info("bus.stream_updated", stream=config.name)
                return
            except ServerError as exc:
                # NATS 2.9 can fail a create with "error creating store for stream" while
                # another stream of the account is being deleted (a race on the account's
                # store folder). It is transient: try again shortly.
                if attempt == _STREAM_CREATE_ATTEMPTS:
                    raise
                _log.warning("bus.stream_create_retry", stream=config.name, error=repr(exc))
                await asyncio.sleep(0.05 * attempt)

    async def _ensure_lease_bucket(self) -> KeyValue:
        js = self._jetstream()
        bucket = lease_bucket(self._prefix)
        try:
            return await js.create_key_value(bucket=bucket, ttl=self._lease_ttl, history=1)
        except BadRequestError as exc:
            _log.warning("bus.lease_bucket_exists", bucket=bucket, error=repr(exc))
            return await js.key_value(bucket)

    async def _ensure_consumer(self, stream: str, config: api.ConsumerConfig) -> None:
        js = self._jetstream()
        try:
            await js.add_consumer(stream, config)
        except (BadRequestError, ServerError) as exc:
            # It exists with another configuration (options changed; an ack policy the server
            # refuses to update answers 500): keep it, say so.
            _log.warning("bus.consumer_kept", consumer=config.durable_name, error=repr(exc))

    def _jetstream(self) -> JetStreamContext:
        if self._js is None or self._nc is None or self._nc.is_closed:
            raise ConnectionError("the NATS bus is not started, or already closed")
        return self._js


def _topic(name: str) -> Topic:
    return topic(name)


async def delete_bus_streams(url: str, stream_prefix: str) -> None:
    """Delete every stream and the lease bucket a bus with ``stream_prefix`` created.

    For tests and benchmarks that use a throwaway prefix; never call it on a live prefix.
    """
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        names = [stream_name(stream_prefix, name) for name in TOPICS]
        names.append(f"KV_{lease_bucket(stream_prefix)}")
        for name in names:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()

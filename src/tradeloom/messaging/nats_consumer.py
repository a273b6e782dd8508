"""One group member on NATS JetStream: durable pull consumers per partition, fetched under lease.

For every partition ``p`` of a topic, group ``g`` has one durable pull consumer ``g_p`` that
filters the partition's subject, acks explicitly and allows ``max_batch`` unacknowledged
events (``max_ack_pending``): the server itself never hands out a later event of a partition
while ``max_batch`` earlier ones are unacked. The member fetches only partitions it holds a
lease on (:mod:`tradeloom.messaging.nats_lease`), one worker task per partition, so partitions
proceed in parallel while each is handled strictly in order.

Retries run in place (see :mod:`tradeloom.messaging.delivery`): the failed event stays the
oldest unacknowledged one and its partition waits, kept alive with ``+WPI`` (in progress) so
the server does not redeliver it elsewhere meanwhile. Server-side naks with a delay are not
used: on 2.9 a nak'd later event of the batch would be redelivered before the delayed earlier
one, breaking per-key order. Redeliveries after a crash or a passed ``ack_wait`` count as
attempts (``num_delivered - 1``), so ``max_deliver`` is unlimited on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

from tradeloom.messaging.delivery import Delivery
from tradeloom.messaging.nats_lease import PartitionLeases, StartWorker, StopWorker
from tradeloom.messaging.port import ConsumerOptions

_log = structlog.get_logger(__name__)

KEY_HEADER = "Tl-Key"
RunDeliveries = Callable[[list[Delivery]], Awaitable[None]]


def consumer_config(durable: str, subject: str, options: ConsumerOptions) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=options.ack_wait,
        max_deliver=-1,
        max_ack_pending=options.max_batch,
        filter_subject=subject,
    )


class PartitionWorker:
    """Fetches one partition of one group and hands what it gets to the runner, in order."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        stream: str,
        durable: str,
        options: ConsumerOptions,
        poll_interval: float,
        run: RunDeliveries,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._options = options
        self._poll_interval = poll_interval
        self._run = run
        self._stopping = False
        self._aborting = False
        self.task: asyncio.Task[None] = asyncio.create_task(self._work(), name=durable)

    def stop(self) -> asyncio.Task[None]:
        """Finish the fetch and the events in hand, then stop. Returns the task to await."""
        self._stopping = True
        return self.task

    def abort(self) -> asyncio.Task[None]:
        """Stop at once, handling and acking nothing more. Returns the task to await.

        The flags, not only the cancellation, end the task: on Python 3.11 a cancel that
        arrives together with a fetched message is swallowed inside nats-py (``next_msg``).
        """
        self._stopping = self._aborting = True
        self.task.cancel()
        return self.task

    async def _work(self) -> None:
        pull = await self._js.pull_subscribe_bind(durable=self._durable, stream=self._stream)
        try:
            while not self._stopping:
                try:
                    messages = await self._fetch(pull)
                except TimeoutError:  # nats-py raises its own subclass, or asyncio's
                    continue
                except Exception as exc:
                    _log.warning("bus.fetch_failed", consumer=self._durable, error=repr(exc))
                    await asyncio.sleep(self._poll_interval)  # back off, the server is unwell
                    continue
                if self._aborting:
                    break  # unacked: the server redelivers them after ack_wait
                if not messages:  # a fetch may answer with status messages only
                    continue
                try:
                    await self._run([_delivery(message) for message in messages])
                except Exception as exc:
                    # Nothing more was acked; the server redelivers after ack_wait, in order.
                    _log.error("bus.delivery_failed", consumer=self._durable, error=repr(exc))
        finally:
            try:
                await pull.unsubscribe()
            except Exception as exc:
                _log.info("bus.unsubscribe_failed", consumer=self._durable, error=repr(exc))

    async def _fetch(self, pull: JetStreamContext.PullSubscription) -> list[Msg]:
        """Wait up to ``poll_interval`` for one event, then up to ``max_wait`` to fill a batch."""
        messages: list[Msg] = await pull.fetch(1, timeout=self._poll_interval)
        if self._options.max_batch > 1:
            try:
                more = await pull.fetch(
                    self._options.max_batch - 1, timeout=max(self._options.max_wait, 0.01)
                )
                messages.extend(more)
            except TimeoutError:
                pass
        return messages


def _delivery(message: Msg) -> Delivery:
    headers = message.headers or {}
    return Delivery(
        data=message.data,
        key=headers.get(KEY_HEADER, ""),
        prior_attempts=message.metadata.num_delivered - 1,
        ack=message.ack,
        keep_alive=message.in_progress,
    )


class GroupMember:
    """A subscription on NATS: owns leased partitions and runs one worker for each."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        stream: str,
        durables: list[str],
        options: ConsumerOptions,
        poll_interval: float,
        run: RunDeliveries,
        make_leases: Callable[[StartWorker, StopWorker], PartitionLeases],
        on_abort: Callable[[], None] | None = None,
    ) -> None:
        self._js = js
        self._on_abort = on_abort
        self._stream = stream
        self._durables = durables
        self._options = options
        self._poll_interval = poll_interval
        self._run = run
        self._workers: dict[int, PartitionWorker] = {}
        self._running: dict[asyncio.Task[None], PartitionWorker] = {}  # stopping ones too
        self._leases = make_leases(self._start_worker, self._stop_worker)

    async def start(self) -> None:
        await self._leases.start()

    async def stop(self) -> None:
        """Drain every worker, release the leases, leave the group."""
        await self._leases.stop()

    async def abort(self) -> None:
        if self._on_abort is not None:
            self._on_abort()  # a batch being handled for several partitions stops unacked
        await self._leases.abort()
        tasks = [worker.abort() for worker in list(self._running.values())]
        if tasks:
            await asyncio.wait(tasks)
        self._workers.clear()

    def _start_worker(self, partition: int) -> None:
        self._workers[partition] = PartitionWorker(
            js=self._js,
            stream=self._stream,
            durable=self._durables[partition],
            options=self._options,
            poll_interval=self._poll_interval,
            run=self._run,
        )
        worker = self._workers[partition]
        self._running[worker.task] = worker
        worker.task.add_done_callback(self._worker_done)

    def _stop_worker(self, partition: int) -> asyncio.Future[None] | None:
        worker = self._workers.pop(partition, None)
        return worker.stop() if worker is not None else None

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            # Unacked events of this partition go back to the server after ack_wait.
            _log.error("bus.worker_failed", worker=task.get_name(), error=repr(task.exception()))

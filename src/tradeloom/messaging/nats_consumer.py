"""One group member on NATS JetStream: durable pull consumers per partition, fetched under lease.

For every partition ``p`` of a topic, group ``g`` has one durable pull consumer ``g_p`` that
filters the partition's subject, acks explicitly and allows ``max_batch`` unacknowledged
events (``max_ack_pending``): the server never has more than ``max_batch`` events of a
partition out at once, and a worker never moves past one it has not settled. The member
fetches only partitions it holds a lease on (:mod:`tradeloom.messaging.nats_lease`), one
worker task per partition, so partitions proceed in parallel while each is handled strictly
in order. A worker pulls with one request
kept open (:mod:`tradeloom.messaging.nats_pull`), not a request per fetch.

Retries run in place (see :mod:`tradeloom.messaging.delivery`): the failed event stays the
oldest unacknowledged one and its partition waits, kept alive with ``+WPI`` (in progress) so
the server does not redeliver it elsewhere meanwhile. Server-side naks with a delay are not
used: on 2.9 a nak'd later event of the batch would be redelivered before the delayed earlier
one, breaking per-key order. Redeliveries after a crash or a passed ``ack_wait`` count as
attempts (``num_delivered - 1``), so ``max_deliver`` is unlimited on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from tradeloom.messaging.delivery import Delivery, Settle
from tradeloom.messaging.nats_lease import PartitionLeases, StartWorker, StopWorker
from tradeloom.messaging.nats_pull import ContinuousPull
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
    """Pulls one partition of one group and hands what it gets to the runner, in order.

    It never moves past an event that is not settled: a hand-over that fails (an ack or a dead
    letter that could not be sent, the bus being down) is retried in place, the events kept
    alive meanwhile, because the events after it are already here and the server would
    redeliver the unsettled one only after ``ack_wait``, behind them. If it is stopped while
    still failing, it hands nothing more over and lets all of it come back in order.
    """

    def __init__(
        self,
        *,
        nc: Client,
        stream: str,
        durable: str,
        options: ConsumerOptions,
        poll_interval: float,
        run: RunDeliveries,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        self._pull = ContinuousPull(
            nc, stream, durable, batch=options.max_batch, expires=poll_interval
        )
        self.durable = durable
        self._options = options
        self._poll_interval = poll_interval
        self._run = run
        self._after = after
        self._stopping = False
        self._aborting = False
        self._failing = False
        self.task: asyncio.Task[None] = asyncio.create_task(self._work(), name=durable)

    def stop(self) -> asyncio.Task[None]:
        """Finish the events in hand and those the server already sent, then stop. Returns
        the task to await."""
        self._stopping = True
        self._pull.interrupt()
        return self.task

    def abort(self) -> asyncio.Task[None]:
        """Stop at once, handling and acking nothing more. Returns the task to await."""
        self._stopping = self._aborting = True
        self.task.cancel()
        return self.task

    async def _work(self) -> None:
        try:
            if self._after is not None:
                # The partition's previous worker of this member (a lease lost and taken
                # back) must be done first: two workers would hand over its events out of order.
                await asyncio.wait([self._after])
            await self._pull.open()
            while not self._stopping:
                messages = await self._pull.take(
                    self._options.max_batch,
                    wait=self._poll_interval,
                    linger=self._options.max_wait if self._options.max_batch > 1 else 0.0,
                )
                if messages and not self._aborting:
                    await self._hand_over(messages)
            if not self._aborting and not self._failing:
                left_over = await self._pull.close(drain=True)
                for start in range(0, len(left_over), self._options.max_batch):
                    if not await self._hand_over(
                        left_over[start : start + self._options.max_batch]
                    ):
                        break
        finally:
            try:  # after an abort, what was delivered unacked comes back after ack_wait
                await self._pull.close(drain=False)
            except Exception as exc:
                _log.info("bus.unsubscribe_failed", consumer=self.durable, error=repr(exc))

    async def _hand_over(self, messages: list[Msg]) -> bool:
        """Hand ``messages`` over until they are settled; False if stopped before that."""
        deliveries = [_delivery(message) for message in messages]
        pause = 0.1
        while True:
            try:
                await self._run(deliveries)
                self._failing = False
                return True
            except Exception as exc:
                self._failing = True
                _log.error("bus.delivery_failed", consumer=self.durable, error=repr(exc))
            if self._stopping:
                return False  # unsettled: they and everything after come back in order
            for delivery in deliveries:
                with contextlib.suppress(Exception):
                    await delivery.keep_alive()
            await asyncio.sleep(pause)
            pause = min(pause * 2, self._poll_interval)


def _delivery(message: Msg) -> Delivery:
    headers = message.headers or {}
    return Delivery(
        data=message.data,
        key=headers.get(KEY_HEADER, ""),
        prior_attempts=message.metadata.num_delivered - 1,
        ack=_settler(message),
        keep_alive=message.in_progress,
    )


def _settler(message: Msg) -> Settle:
    """``message.ack`` that does nothing for a message already acked: a hand-over retried in
    place acks again what an earlier attempt had acked (nats-py would raise)."""

    async def ack() -> None:
        if not message.is_acked:
            await message.ack()

    return ack


class GroupMember:
    """A subscription on NATS: owns leased partitions and runs one worker for each."""

    def __init__(
        self,
        *,
        nc: Client,
        stream: str,
        durables: list[str],
        options: ConsumerOptions,
        poll_interval: float,
        run: RunDeliveries,
        make_leases: Callable[[StartWorker, StopWorker], PartitionLeases],
        on_abort: Callable[[], None] | None = None,
    ) -> None:
        self._nc = nc
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
        """Stop at once, as a crash would: nothing more is handled or acked."""
        if self._on_abort is not None:
            self._on_abort()  # a batch being handled for several partitions stops unacked
        tasks = [worker.abort() for worker in list(self._running.values())]
        await self._leases.abort()
        tasks += [worker.abort() for worker in list(self._running.values())]
        if tasks:
            await asyncio.wait(tasks)
        self._workers.clear()

    def _start_worker(self, partition: int) -> None:
        durable = self._durables[partition]
        previous = [task for task, w in self._running.items() if w.durable == durable]
        self._workers[partition] = PartitionWorker(
            nc=self._nc,
            stream=self._stream,
            durable=durable,
            options=self._options,
            poll_interval=self._poll_interval,
            run=self._run,
            after=previous[-1] if previous else None,
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

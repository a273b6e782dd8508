"""Partition leases in a JetStream key-value bucket: who in a group may fetch which partition.

NATS 2.9 has no pinned consumers, so per-key order across processes needs each partition of a
group to be fetched by one member at a time. A member owns partition ``p`` while it holds the
key ``<scope>.p.<p>`` in the lease bucket. The bucket's TTL is the lease TTL: a key that is not
renewed disappears, so a dead member's partitions become claimable after at most ``ttl``.

* **Claim**: ``kv.create`` (fails if another member holds the key). **Renew**: every ``ttl/3``
  with ``kv.update(last=revision)``, which fails if the key expired or changed hands; then the
  partition is dropped at once (its worker stops fetching). **Release**: the worker is drained
  first (in-flight events finish and are acked), then the key is deleted conditionally on our
  revision, so a lease that already changed hands is never removed.
* **Fair share**: members register under ``<scope>.m.<member>`` (same TTL, renewed alongside).
  Each member holds at most ``ceil(partitions / live members)`` and claims free partitions up to
  that. A lone member claims everything at once when it starts. A member that left gracefully
  removes its key; one that died counts until its key expires, so rebalancing after a crash
  takes up to ``ttl``.
* **Edge case**: a member whose lease lapses in the middle of a batch (a pause longer than the
  TTL) keeps handling that batch while another member may already own the partition. The
  server still holds those events as unacknowledged (``max_ack_pending``), so the new owner
  gets them only after ``ack_wait``; if the old member is slower than that, events are handled
  twice, possibly concurrently. Consumers are idempotent, which absorbs that.

All methods run on the bus's event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import structlog
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tradeloom.domain.ids import new_id
from tradeloom.messaging.partitioning import partition_of

_log = structlog.get_logger(__name__)

StartWorker = Callable[[int], None]
StopWorker = Callable[[int], "asyncio.Future[None] | None"]


class PartitionLeases:
    """The leases one group member holds on one topic's partitions."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        kv: KeyValue,
        bucket: str,
        scope: str,
        partitions: int,
        ttl: float,
        start_worker: StartWorker,
        stop_worker: StopWorker,
    ) -> None:
        self.member_id = new_id().replace("-", "")
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self._scope = scope
        self._partitions = partitions
        self._ttl = ttl
        self._start_worker = start_worker
        self._stop_worker = stop_worker
        self._owned: dict[int, int] = {}  # partition -> revision of our lease key
        self._releasing: dict[int, asyncio.Task[None]] = {}
        self._member_revision = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False  # ends the loop even if its cancellation was swallowed
        self._kv_lock = asyncio.Lock()  # renewals and releases must not interleave

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    async def start(self) -> None:
        self._member_revision = await self._kv.create(self._member_key, b"")
        async with self._kv_lock:
            await self._rebalance()
        self._loop_task = asyncio.create_task(self._maintain(), name=f"leases {self._scope}")

    async def stop(self) -> None:
        """Drain and release every partition, then leave the group."""
        await self._cancel_loop()
        for partition in list(self._owned):
            if partition not in self._releasing:
                self._release(partition)
        if self._releasing:
            await asyncio.wait(list(self._releasing.values()))
        await self._js.purge_stream(f"KV_{self._bucket}", subject=self._subject(self._member_key))

    async def abort(self) -> None:
        """Stop renewing without releasing anything, like a crashed process."""
        await self._cancel_loop()
        for task in self._releasing.values():
            task.cancel()

    async def _cancel_loop(self) -> None:
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait([self._loop_task])
            self._loop_task = None

    async def _maintain(self) -> None:
        # Cancelling alone does not end this loop reliably: on Python 3.11 ``asyncio.wait_for``
        # (which nats-py's requests use) returns the reply instead of raising when the cancel
        # arrives together with it. The flag ends the loop after that round at the latest.
        while not self._stopping:
            await asyncio.sleep(self._ttl / 3)
            try:
                async with self._kv_lock:
                    await self._renew()
                    await self._rebalance()
            except Exception as exc:
                # Leases we could not renew lapse on their own; others take the partitions.
                _log.warning("bus.lease_maintenance_failed", scope=self._scope, error=repr(exc))

    async def _renew(self) -> None:
        try:
            self._member_revision = await self._kv.update(
                self._member_key, b"", last=self._member_revision
            )
        except KeyWrongLastSequenceError:
            self._member_revision = await self._kv.create(self._member_key, b"")
        for partition, revision in list(self._owned.items()):
            try:
                self._owned[partition] = await self._kv.update(
                    self._partition_key(partition), self.member_id.encode(), last=revision
                )
            except KeyWrongLastSequenceError:
                _log.warning("bus.lease_lost", scope=self._scope, partition=partition)
                del self._owned[partition]
                self._stop_worker(partition)

    async def _rebalance(self) -> None:
        share = math.ceil(self._partitions / await self._live_members())
        keeping = [p for p in sorted(self._owned) if p not in self._releasing]
        for partition in keeping[share:]:
            self._release(partition)
        wanted = share - min(len(keeping), share)
        offset = partition_of(self.member_id, self._partitions)  # spread members' first claims
        for step in range(self._partitions):
            if wanted <= 0:
                break
            partition = (offset + step) % self._partitions
            if partition in self._owned:
                continue
            try:
                self._owned[partition] = await self._kv.create(
                    self._partition_key(partition), self.member_id.encode()
                )
            except KeyWrongLastSequenceError:
                continue  # another member holds it
            wanted -= 1
            _log.debug("bus.lease_claimed", scope=self._scope, partition=partition)
            self._start_worker(partition)

    async def _live_members(self) -> int:
        info = await self._js.stream_info(
            f"KV_{self._bucket}", subjects_filter=self._subject(f"{self._scope}.m.*")
        )
        return max(1, len(info.state.subjects or {}))

    def _release(self, partition: int) -> None:
        drained = self._stop_worker(partition)
        self._releasing[partition] = asyncio.create_task(self._give_back(partition, drained))

    async def _give_back(self, partition: int, drained: asyncio.Future[None] | None) -> None:
        try:
            if drained is not None:
                await asyncio.wait([drained])
            async with self._kv_lock:
                revision = self._owned.pop(partition, None)
                if revision is not None:
                    await self._kv.delete(self._partition_key(partition), last=revision)
        except APIError as exc:
            # Most likely the lease lapsed meanwhile: whoever holds it now keeps it.
            _log.info("bus.lease_release_failed", scope=self._scope, error=repr(exc))
        finally:
            self._releasing.pop(partition, None)

    @property
    def _member_key(self) -> str:
        return f"{self._scope}.m.{self.member_id}"

    def _partition_key(self, partition: int) -> str:
        return f"{self._scope}.p.{partition}"

    def _subject(self, key: str) -> str:
        return f"$KV.{self._bucket}.{key}"

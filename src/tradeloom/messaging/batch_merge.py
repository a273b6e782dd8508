"""One handler call for the batches several partitions fetched at about the same time.

A member of a consumer group fetches each partition it holds on its own worker, so under a
steady trickle every partition brings a small batch, and a batch handler pays its fixed cost
(a transaction, its round trips) once per partition per fetch. :class:`MergedBatches` is a
group commit for those batches: while one merged batch is being handled, what the other
partitions fetched queues, and the next call hands all of it over at once, up to
``max_batch`` events. Nothing waits to be merged: an idle member hands a batch over at once.

What it keeps of the port's semantics:

* **Per-key order.** A partition's worker waits for its batch to be settled before it hands
  over the next, and a merged batch keeps each partition's events in their order, so a key
  (which lives in one partition) is never reordered.
* **Failures stay in their partition.** If a merged batch fails, each partition's part goes
  back to its own worker, which retries it as :meth:`DeliveryRunner.run_batch` does (the batch
  again, then one event at a time with backoff). A failing event therefore holds back only its
  own partition, never the others merged with it. (A part that was alone in the failed batch
  is therefore tried as a batch twice; a batch attempt counts toward no event's retries.) An
  error that is not the handler's (an ack that could not be sent) is raised to every part's
  worker, which retries its part in place.
* **Kept alive while queued.** A part waiting behind a slow batch tells the broker it is in
  hand every ``keep_alive_every`` seconds, so ``ack_wait`` does not pass meanwhile.
* **Ack after the handler.** Every delivery of a merged batch is acked only after the handler
  returned (by :meth:`DeliveryRunner.try_batch`).
* **Abort acks nothing more.** A worker cancelled while its part is still queued withdraws it;
  :meth:`abort` cancels the batch in flight, which is then left unacked for redelivery, and
  refuses every later part.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable

from tradeloom.messaging.delivery import Delivery

TryDeliveries = Callable[[list[Delivery]], Awaitable[bool]]
"""Hand deliveries over as one batch; True if handled and acked, False to retry them apart."""
RunDeliveries = Callable[[list[Delivery]], Awaitable[None]]
"""Hand one partition's deliveries over with every retry rule of the port."""


class _Part:
    __slots__ = ("deliveries", "settled")

    def __init__(self, deliveries: list[Delivery], settled: asyncio.Future[bool]) -> None:
        self.deliveries = deliveries
        self.settled = settled  # True: handled in a merged batch; False: retry it alone


class MergedBatches:
    """Merges the batches of one member's partition workers into fewer handler calls."""

    def __init__(
        self,
        try_merged: TryDeliveries,
        run_alone: RunDeliveries,
        max_batch: int,
        *,
        keep_alive_every: float = 10.0,
    ) -> None:
        self._try_merged = try_merged
        self._run_alone = run_alone
        self._max_batch = max(1, max_batch)
        self._keep_alive_every = max(0.01, keep_alive_every)
        self._queued: list[_Part] = []
        self._flusher: asyncio.Task[None] | None = None
        self._aborted = False

    async def run(self, deliveries: list[Delivery]) -> None:
        """Handle one partition's deliveries, merged with whatever else is queued meanwhile.

        Returns once they are settled (acked, or dead-lettered by the retry rules); raises
        what the partition's own retry raises, as :meth:`DeliveryRunner.run_batch` would.
        """
        if self._aborted:
            raise asyncio.CancelledError("the subscription was aborted")
        if not deliveries:
            return
        part = _Part(deliveries, asyncio.get_running_loop().create_future())
        self._queued.append(part)
        if self._flusher is None or self._flusher.done():
            # In a context of its own: it handles every partition's batches, not the first's.
            self._flusher = asyncio.create_task(
                self._flush(), name="bus.merged_batches", context=contextvars.Context()
            )
        try:
            handled = await self._settled(part)
        except asyncio.CancelledError:
            if part in self._queued:
                self._queued.remove(part)  # not taken yet: nothing of it is handled or acked
            raise
        if not handled:
            await self._run_alone(deliveries)

    def abort(self) -> None:
        """Stop handling: the batch in flight is cancelled and nothing more is acked."""
        self._aborted = True
        if self._flusher is not None:
            self._flusher.cancel()
        for part in self._queued:
            if not part.settled.done():
                part.settled.cancel()
        self._queued.clear()

    async def _settled(self, part: _Part) -> bool:
        """The part's outcome; while it is still queued, its deliveries are kept alive."""
        while True:
            # asyncio.wait never cancels what it waits for: a cancelled worker leaves the
            # outcome to the flusher.
            done, _ = await asyncio.wait([part.settled], timeout=self._keep_alive_every)
            if done:
                return part.settled.result()
            if part in self._queued:
                for delivery in part.deliveries:
                    await delivery.keep_alive()

    async def _flush(self) -> None:
        while self._queued:
            taken = self._take()
            merged = [delivery for part in taken for delivery in part.deliveries]
            try:
                handled = await self._try_merged(merged)
            except asyncio.CancelledError:
                for part in taken:
                    if not part.settled.done():
                        part.settled.cancel()
                raise
            except Exception as exc:  # not the handler's failure: an ack that was not sent
                for part in taken:
                    if not part.settled.done():
                        part.settled.set_exception(exc)
                continue
            for part in taken:
                if not part.settled.done():
                    part.settled.set_result(handled)

    def _take(self) -> list[_Part]:
        """Whole parts in arrival order, up to ``max_batch`` events (at least one part)."""
        taken = [self._queued.pop(0)]
        size = len(taken[0].deliveries)
        while self._queued and size + len(self._queued[0].deliveries) <= self._max_batch:
            part = self._queued.pop(0)
            size += len(part.deliveries)
            taken.append(part)
        return taken

"""The transactional outbox: events commit with the state change that caused them, and a relay
publishes them afterwards.

Writers call :meth:`Outbox.add` inside their own ``Database.transaction()``, so an order row
and its ``order.submitted`` event commit together or not at all (no dual write); or, on
PostgreSQL, write state and events in one statement built from :data:`PG_INSERT_FROM_ARRAYS`
and :data:`PG_KEY_LOCK` (the OMS's placements do), which must hold every key lock before it
numbers a row (see **Order** below). After the commit they call :meth:`OutboxRelay.notify` so
the relay publishes at once; if they crash first, the relay finds the rows at its next start
or poll. Nothing is lost between commit and publish.

Delivery is **at least once**: a row is marked published only after the bus acknowledged it,
so a crash between publish and mark publishes it again with the same event id, and the bus's
event-id deduplication absorbs the copy.

**Order.** The relay publishes in ``sequence`` order, and the bus keeps per-key order within a
topic, so the events of one key arrive in sequence order. Sequence order is commit order for
one key because:

* on SQLite writers are serialised (see :mod:`tradeloom.storage.database`);
* on PostgreSQL :meth:`Outbox.add` takes a transaction-level advisory lock per key before
  inserting, so a second transaction writing the same key gets its sequence number only after
  the first committed. The lock is held to the end of the caller's transaction: add outbox
  rows after taking any other row locks, and PostgreSQL's deadlock detector turns a
  conflicting order into an error the caller can retry.
* across processes only one relay publishes at a time: a pass holds a session-level advisory
  lock (``pg_advisory_lock``). A relay that finds it taken WAITS for it (in PostgreSQL, no
  CPU spent) and then makes its pass: the holder may have read its last batch before this
  process's rows committed, so skipping the pass could leave them for ``poll_interval``, and
  retrying on a timer would spin while another process publishes continuously.
  On SQLite run one relay per database file (the embedded deployment).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import Integer, bindparam, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.events import Event, decode_event, encode_event
from tradeloom.domain.time import Clock, SystemClock
from tradeloom.messaging.port import EventBus
from tradeloom.storage.database import Database
from tradeloom.storage.schema import UtcDateTime, outbox
from tradeloom.storage.statements import ByDialect

log = structlog.get_logger("tradeloom.storage.outbox")

# Advisory lock names. The one-key (bigint) and two-key (int, int) spaces do not overlap.
RELAY_LOCK_ID = 0x7472_6C6D_0002
KEY_LOCK_CLASS = 0x7472_6C6D  # "trlm"


# PostgreSQL: the rows as arrays in one statement of one text whatever their number (an
# executemany sends a differently sized VALUES list per batch, each prepared anew). The
# identity column draws its numbers as the rows arrive at the insert, and ORDER BY the
# ordinality makes them arrive in the order of the arrays: sequence order is the caller's.
# PG_INSERT_FROM_ARRAYS is that insert before its ORDER BY, for a statement that inserts a
# subset of the rows (a WHERE over ``r``) together with other writes: see
# :meth:`Outbox.pg_parameters`.
PG_INSERT_FROM_ARRAYS = (
    'INSERT INTO outbox (event_id, topic, "key", event_type, payload, created_at)'
    ' SELECT r.event_id, r.topic, r."key", r.event_type, r.payload,'
    " CAST(:outbox_created_at AS timestamptz) FROM unnest(CAST(:event_id AS varchar[]),"
    " CAST(:topic AS varchar[]), CAST(:key AS varchar[]), CAST(:event_type AS varchar[]),"
    " CAST(:payload AS bytea[])) WITH ORDINALITY"
    ' AS r(event_id, topic, "key", event_type, payload, n)'
)
# The per-key locks of PostgreSQL rows (see the module doc): PG_KEY_LOCK over the rows of
# PG_KEY_LOCK_IDS takes one lock a row, in the array's order (ascending; a function scan
# keeps it).
PG_KEY_LOCK = "pg_advisory_xact_lock(CAST(:lock_class AS integer), k)"
PG_KEY_LOCK_IDS = "unnest(CAST(:lock_ids AS integer[])) AS k"
_LOCK_KEYS = text(f"SELECT {PG_KEY_LOCK} FROM {PG_KEY_LOCK_IDS}")
_INSERT_ROWS_PG = text(f"{PG_INSERT_FROM_ARRAYS} ORDER BY r.n").bindparams(
    bindparam("outbox_created_at", type_=UtcDateTime())
)


# The relay's statements are built once with bound parameters and reused: building one and
# deriving its cache key costs more here than PostgreSQL's part of running it, and the relay
# runs them for every batch (see tradeloom.storage.statements).
_INSERT_ROWS = insert(outbox)
_UNPUBLISHED = (
    select(outbox.c.sequence, outbox.c.topic, outbox.c.key, outbox.c.payload)
    .where(outbox.c.published_at.is_(None))
    .order_by(outbox.c.sequence)
    .limit(bindparam("limit", type_=Integer()))
)
# By explicit sequence numbers, never by range: on PostgreSQL a row with a lower number may
# commit after this batch was read, and it has not been published.
_MARK_PUBLISHED = ByDialect(
    lambda among: (
        update(outbox)
        .where(among(outbox.c.sequence, "sequences"))
        .values(published_at=bindparam("published_at"))
    )
)
_PURGE_PUBLISHED = delete(outbox).where(
    outbox.c.published_at.is_not(None), outbox.c.published_at < bindparam("cutoff")
)
_TAKE_RELAY_LOCK = select(func.pg_advisory_lock(RELAY_LOCK_ID))
_RELEASE_RELAY_LOCK = select(func.pg_advisory_unlock(RELAY_LOCK_ID))


def key_lock_id(key: str) -> int:
    """A stable signed 32-bit number for ``key``; a collision only serialises two keys."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), signed=True)


class Outbox:
    """Writes events into the caller's transaction."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()

    async def add(self, conn: AsyncConnection, topic: str, key: str, event: Event) -> None:
        """Record ``event`` for publication on ``topic`` under ``key`` when ``conn``'s
        transaction commits. An event id already in the outbox raises ``IntegrityError``."""
        await self.add_many(conn, [(topic, key, event)])

    async def add_many(
        self, conn: AsyncConnection, items: Iterable[tuple[str, str, Event]]
    ) -> None:
        """Record ``(topic, key, event)`` triples; they get sequence numbers in this order.
        An event id already in the outbox raises ``IntegrityError`` (and writes none)."""
        items = list(items)
        if not items:
            return
        if conn.dialect.name == "postgresql":
            # Every key's lock in one round trip, in ascending order, so two transactions
            # locking the same keys cannot deadlock each other; then the rows.
            values = self.pg_parameters(items)
            await conn.execute(_LOCK_KEYS, values)
            await conn.execute(_INSERT_ROWS_PG, values)
            return
        now = self._clock.now()
        rows = [
            {
                "event_id": event.id,
                "topic": topic,
                "key": key,
                "event_type": event.type,
                "payload": encode_event(event),
                "created_at": now,
            }
            for topic, key, event in items
        ]
        await conn.execute(_INSERT_ROWS, rows)

    def pg_parameters(self, items: Sequence[tuple[str, str, Event]]) -> dict[str, object]:
        """``(topic, key, event)`` triples as the parameters of :data:`PG_INSERT_FROM_ARRAYS`
        (its rows get sequence numbers in this order) and of :data:`PG_KEY_LOCK` (a lock
        per key, ascending). A statement writing outbox rows must take those locks before
        it inserts them (see the module doc)."""
        return {
            "event_id": [event.id for _, _, event in items],
            "topic": [topic for topic, _, _ in items],
            "key": [key for _, key, _ in items],
            "event_type": [event.type for _, _, event in items],
            "payload": [encode_event(event) for _, _, event in items],
            "outbox_created_at": self._clock.now(),
            "lock_class": KEY_LOCK_CLASS,
            "lock_ids": sorted({key_lock_id(key) for _, key, _ in items}),
        }


@dataclass(frozen=True, slots=True)
class _Pending:
    sequence: int
    topic: str
    key: str
    event: Event


class OutboxRelay:
    """Publishes committed outbox rows to the bus, in sequence order, at least once.

    ``start`` runs a background task: it first publishes whatever a previous process left
    behind, then wakes on :meth:`notify` or every ``poll_interval`` seconds. A failing bus is
    retried with exponential backoff (``retry_backoff`` doubling up to ``max_backoff``);
    nothing is marked published until the bus acknowledged it.
    """

    def __init__(
        self,
        database: Database,
        bus: EventBus,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        retry_backoff: float = 0.1,
        max_backoff: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._database = database
        self._bus = bus
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry_backoff = retry_backoff
        self._max_backoff = max_backoff
        self._clock = clock or SystemClock()
        self._wakeup = asyncio.Event()
        self._one_pass_at_a_time = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Launch the background task (once); it starts with the backlog a previous process
        left. Returns at once: the backlog goes out in the background."""
        if self._task is not None:
            raise RuntimeError("the outbox relay is already started")
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def notify(self) -> None:
        """Tell the relay new rows were committed. Cheap; call right after the commit, on the
        event loop's thread (it is not thread-safe)."""
        self._wakeup.set()

    async def close(self, grace: float = 5.0) -> None:
        """Stop the task: let a pass in progress finish for up to ``grace`` seconds, then
        cancel it. Rows it published but did not mark are published again at the next start."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        self._wakeup.set()
        await asyncio.wait({task}, timeout=grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def publish_pending(self) -> int:
        """Publish everything unpublished, batch by batch; return how many were published.

        Waits while another relay holds the PostgreSQL relay lock. Raises whatever the bus
        raised, after marking the batches it did acknowledge.
        """
        published = 0
        async with self._one_pass_at_a_time, self._relay_lock() as locked:
            while True:
                count = await self._publish_batch(locked)
                published += count
                if count < self._batch_size or self._stop.is_set():
                    return published
        return published

    async def purge_published(self, older_than: timedelta) -> int:
        """Delete rows published more than ``older_than`` ago; return how many. Housekeeping:
        once published, a row is only needed to explain what happened, and the audit archive
        keeps every event for that."""
        cutoff = self._clock.now() - older_than
        async with self._database.transaction() as conn:
            result = await conn.execute(_PURGE_PUBLISHED, {"cutoff": cutoff})
        return result.rowcount

    async def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wakeup.clear()
            try:
                await self.publish_pending()
            except Exception as exc:
                failures += 1
                delay = min(self._max_backoff, self._retry_backoff * 2 ** (failures - 1))
                log.warning(
                    "outbox.publish_failed",
                    attempt=failures,
                    retry_in=delay,
                    error=repr(exc),
                    exc_info=True,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                continue
            failures = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_interval)

    async def _publish_batch(self, locked: AsyncConnection | None) -> int:
        batch = await self._read_batch(locked)
        acknowledged: list[int] = []
        try:
            for topic, items in _by_topic(batch).items():
                await self._bus.publish_many(topic, [(p.event, p.key) for p in items])
                acknowledged.extend(p.sequence for p in items)
        finally:
            if acknowledged:
                await self._mark_published(locked, acknowledged)
        return len(batch)

    async def _read_batch(self, locked: AsyncConnection | None) -> list[_Pending]:
        values = {"limit": self._batch_size}
        if locked is not None:
            rows = (await locked.execute(_UNPUBLISHED, values)).all()
        else:
            async with self._database.connect() as conn:
                rows = (await conn.execute(_UNPUBLISHED, values)).all()
        return [_Pending(row[0], row[1], row[2], decode_event(row[3])) for row in rows]

    async def _mark_published(
        self, locked: AsyncConnection | None, sequences: Sequence[int]
    ) -> None:
        values = {"sequences": list(sequences), "published_at": self._clock.now()}
        if locked is not None:
            # One statement in autocommit: atomic by itself, one round trip, no BEGIN/COMMIT.
            await locked.execute(_MARK_PUBLISHED(locked), values)
            return
        async with self._database.transaction() as conn:
            await conn.execute(_MARK_PUBLISHED(conn), values)

    @contextlib.asynccontextmanager
    async def _relay_lock(self) -> AsyncIterator[AsyncConnection | None]:
        """Hold PostgreSQL's relay lock for one pass, waiting for it while another relay
        makes its pass; yield the lock's connection (in autocommit), on which the pass reads
        and marks its batches (one connection a pass, not three a batch). SQLite has no relay
        lock (one relay per database file): None."""
        if self._database.dialect != "postgresql":
            yield None
            return
        async with self._database.connect() as conn:
            try:
                await conn.execute(_TAKE_RELAY_LOCK)
                await conn.commit()
                yield conn
            except BaseException:
                # A session lock outlives rollback, and one granted just as the wait was
                # cancelled would be held unseen: closing the connection is the sure release.
                await conn.invalidate()
                raise
            await conn.execute(_RELEASE_RELAY_LOCK)
            await conn.commit()


def _by_topic(batch: Iterable[_Pending]) -> dict[str, list[_Pending]]:
    """Split a batch per topic, keeping sequence order inside each; the bus orders per key
    within a topic only, so nothing is lost by publishing topic by topic."""
    groups: dict[str, list[_Pending]] = {}
    for pending in batch:
        groups.setdefault(pending.topic, []).append(pending)
    return groups

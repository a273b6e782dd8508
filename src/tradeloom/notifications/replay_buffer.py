"""Each user's recent messages, numbered 1, 2, 3, ... so a reconnecting stream can resume.

Keys (the cache adapter adds the deployment's namespace, as for every key):

* ``notifications:OWNER:seq``: the last id handed out to OWNER. It never expires, so ids keep
  increasing for as long as the cache keeps its state (one small key per user ever notified).
* ``notifications:OWNER:slot:N``: the message whose ``id % capacity == N``, id inside, with the
  TTL. A later message overwrites the slot, which is how a reader knows a message left.
* ``notifications:OWNER:event:EVENT_ID``: the id given to that event, for the TTL: a
  redelivered event gets its first id back instead of a second message.

Guarantees:

* Ids are handed out atomically in the cache (one script per batch, see
  :mod:`~tradeloom.notifications.script`): two notifier processes never hand out the same id,
  and an owner's ids have no holes.
* The buffer keeps at least the last ``capacity`` (1024) messages of a user that are younger
  than ``ttl`` (10 minutes), more than the "1,000 messages or 5 minutes" a reconnect needs.
* :meth:`ReplayBuffer.since` answers :class:`Resume` with exactly the messages after
  ``last_id``, in id order, or :class:`Reset` ("reload your snapshot") whenever it cannot: one
  of them was overwritten or expired, or ``last_id`` is ahead of the current id (the cache
  lost its state) or negative. It never returns a gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from tradeloom.cache.port import Cache
from tradeloom.notifications.messages import Notification, decode_notification
from tradeloom.notifications.script import APPEND, SENT_SUFFIX

CAPACITY = 1024
TTL = 600.0  # seconds
KEY_PREFIX = "notifications:"


@dataclass(frozen=True, slots=True)
class Entry:
    """A message to append: for ``owner``, caused by ``event_id``, without its id yet."""

    owner: str
    event_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Appended:
    """What an append did. ``publish`` is False for an event already appended and published
    (or whose message left the buffer since): publish ``message`` only when it is True."""

    owner: str
    event_id: str
    id: int
    message: bytes
    publish: bool


@dataclass(frozen=True, slots=True)
class Resume:
    """The messages after the reader's last id, oldest first: nothing was lost."""

    messages: tuple[Notification, ...]


@dataclass(frozen=True, slots=True)
class Reset:
    """Messages after the reader's last id are gone: reload the snapshot, then follow the
    messages after ``current``."""

    current: int


def _counter_key(owner: str) -> str:
    return f"{KEY_PREFIX}{owner}:seq"


def _slot_stem(owner: str) -> str:
    return f"{KEY_PREFIX}{owner}:slot:"


def _marker_key(owner: str, event_id: str) -> str:
    return f"{KEY_PREFIX}{owner}:event:{event_id}"


def _holds(raw: bytes | None, message_id: int) -> Notification | None:
    """The message in a slot if it is the one numbered ``message_id``."""
    if not raw:
        return None
    try:
        message = decode_notification(raw)
    except msgspec.DecodeError:
        return None
    return message if message.id == message_id else None


class ReplayBuffer:
    """Appends numbered messages and replays them, through the ``Cache`` port."""

    def __init__(self, cache: Cache, *, capacity: int = CAPACITY, ttl: float = TTL) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("the replay buffer needs a positive capacity and TTL")
        self._cache = cache
        self.capacity = capacity
        self.ttl = ttl

    async def append_many(self, entries: Sequence[Entry]) -> list[Appended]:
        """Number and store ``entries`` in order, in one atomic step; an entry whose event was
        appended before gets its first id back. Publish after this returns, then call
        :meth:`mark_sent`."""
        if not entries:
            return []
        keys: list[str] = []
        for entry in entries:
            keys += [
                _counter_key(entry.owner),
                _marker_key(entry.owner, entry.event_id),
                _slot_stem(entry.owner),
            ]
        args = [str(self.capacity), str(round(self.ttl * 1000))]
        args += [entry.body.decode() for entry in entries]
        reply = await self._cache.run_script(APPEND, keys, args)
        if not isinstance(reply, list) or len(reply) != 3 * len(entries):
            raise RuntimeError(f"unexpected reply from {APPEND.name}: {reply!r}")
        return [_appended(entry, *reply[3 * i : 3 * i + 3]) for i, entry in enumerate(entries)]

    async def mark_sent(self, appended: Sequence[Appended]) -> None:
        """Remember that these messages were published: a redelivery of their events will not
        publish them again."""
        markers = {
            _marker_key(item.owner, item.event_id): f"{item.id}{SENT_SUFFIX}".encode()
            for item in appended
        }
        await self._cache.set_many(markers, ttl=self.ttl)

    async def current_id(self, owner: str) -> int:
        """The last id handed out to ``owner``; 0 before the first message."""
        raw = await self._cache.get(_counter_key(owner))
        return 0 if raw is None else int(raw)

    async def since(self, owner: str, last_id: int) -> Resume | Reset:
        """The messages after ``last_id``, or :class:`Reset` when any of them is gone."""
        current = await self.current_id(owner)
        if last_id < 0 or last_id > current or current - last_id > self.capacity:
            return Reset(current)
        wanted = range(last_id + 1, current + 1)
        raws = await self._cache.get_many(
            [f"{_slot_stem(owner)}{i % self.capacity}" for i in wanted]
        )
        messages = [_holds(raw, message_id) for raw, message_id in zip(raws, wanted, strict=True)]
        if any(message is None for message in messages):
            return Reset(current)
        return Resume(tuple(message for message in messages if message is not None))


def _appended(entry: Entry, status: object, message_id: object, message: object) -> Appended:
    if not isinstance(status, int) or not isinstance(message_id, int):
        raise RuntimeError(f"unexpected reply from {APPEND.name}: {status!r}, {message_id!r}")
    stored = message if isinstance(message, bytes) else b""
    publish = status == 1 or (status == 0 and _holds(stored, message_id) is not None)
    return Appended(entry.owner, entry.event_id, message_id, stored, publish)

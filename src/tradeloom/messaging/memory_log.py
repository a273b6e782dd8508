"""Storage pieces of the in-memory broker: a trimmable partition log and a dedup window.

:class:`PartitionLog` is an append-only sequence of records addressed by a stable offset, like
a JetStream stream sequence: trimming the head does not renumber what remains. It is a list
with a head index, compacted once the dropped head outweighs the live part, so appending,
trimming and reading any offset are O(1) amortized.

:class:`DedupWindow` remembers the event ids published on one topic and forgets each one
``window`` seconds after it was first seen, so its size is bounded by the publish rate times
the window, however long the process runs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

_COMPACT_AT = 1024  # dropped head slots before the list is compacted (and more than half)


@dataclass(frozen=True, slots=True)
class Record:
    data: bytes
    key: str
    stored_at: float  # monotonic seconds, for time-based retention


class PartitionLog:
    """Records ``base .. end-1`` of one partition; offsets never change once given."""

    __slots__ = ("_head", "_items", "base")

    def __init__(self, base: int = 0) -> None:
        self._items: list[Record | None] = []
        self._head = 0  # index in _items of the record at offset ``base``
        self.base = base  # the offset of the oldest retained record

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def end(self) -> int:
        """The offset the next appended record gets."""
        return self.base + len(self)

    def append(self, record: Record) -> int:
        """Store ``record``; returns its offset."""
        self._items.append(record)
        return self.end - 1

    def get(self, offset: int) -> Record:
        if not self.base <= offset < self.end:
            raise IndexError(f"offset {offset} is not retained ({self.base}..{self.end - 1})")
        record = self._items[self._head + offset - self.base]
        assert record is not None
        return record

    def oldest(self) -> Record | None:
        return self._items[self._head] if len(self) else None

    def drop_before(self, offset: int) -> int:
        """Forget every record with an offset below ``offset``; returns how many went."""
        count = min(offset, self.end) - self.base
        if count <= 0:
            return 0
        items, head = self._items, self._head
        for index in range(head, head + count):
            items[index] = None  # release the bytes now, not at the next compaction
        self._head = head + count
        self.base += count
        if self._head >= _COMPACT_AT and self._head * 2 >= len(items):
            del items[: self._head]
            self._head = 0
        return count

    def first_younger_than(self, cutoff: float, limit: int) -> int:
        """The offset of the first record stored at or after ``cutoff``, at most ``limit``."""
        offset = self.base
        stop = min(limit, self.end)
        while offset < stop and self.get(offset).stored_at < cutoff:
            offset += 1
        return offset


class DedupWindow:
    """The ids published on one topic within the last ``window`` seconds."""

    __slots__ = ("_seen", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> first seen, oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, event_id: str, now: float) -> bool:
        """Forget ids older than the window; then True if ``event_id`` is new (and remember it).

        An id is remembered from its first publish only (a republish does not extend it), so
        insertion order is time order and expiry only ever looks at the front.
        """
        seen, cutoff = self._seen, now - self.window
        while seen:
            first_id, first_seen = next(iter(seen.items()))
            if first_seen >= cutoff:
                break
            del seen[first_id]
        if event_id in seen:
            return False
        seen[event_id] = now
        return True

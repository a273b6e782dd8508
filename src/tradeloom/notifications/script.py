"""The replay buffer's one atomic step: number, store and remember a batch of messages.

``APPEND`` handles each item in the order given. KEYS, three per item: the owner's counter,
the event's marker, the owner's slot-key stem (the slot key is the stem followed by
``id % capacity``; it is derived inside the script because the id is only known there, and
the stem is a declared, already-prefixed key, so the derived key carries the cache's
namespace too). ARGV: capacity, TTL in milliseconds, then one message body per item (a JSON
object without ``id``; see :mod:`tradeloom.notifications.messages`).

For an event seen for the first time the counter is incremented (it never expires, so ids keep
increasing), the message with its id first is written to its slot and the marker remembers the
id; slot and marker expire after the TTL. For an event whose marker is still there nothing
changes. Reply, three values per item: status (1 new, 0 seen but not yet confirmed published,
-1 seen and published), the message id, and the slot's current bytes (empty when the slot
expired; possibly a later message that overwrote it: the caller compares ids).

A marker holds ``ID`` after the append and ``ID:sent`` once the caller confirmed the publish
(a plain ``set``), so a redelivered event is published again only if its first publish may
have been lost.
"""

from __future__ import annotations

from collections.abc import Sequence

from tradeloom.cache.port import CacheScript, ScriptStore
from tradeloom.notifications.messages import with_id

SENT_SUFFIX = ":sent"

_APPEND_LUA = """
local capacity = tonumber(ARGV[1])
local replies = {}
for i = 1, #ARGV - 2 do
  local counter, marker, stem = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local known = redis.call('GET', marker)
  if known then
    local id = tonumber(string.match(known, '^(%d+)'))
    local status = 0
    if string.find(known, ':sent', 1, true) then status = -1 end
    local message = redis.call('GET', stem .. tostring(id % capacity)) or ''
    table.insert(replies, status)
    table.insert(replies, id)
    table.insert(replies, message)
  else
    local id = redis.call('INCR', counter)
    local message = '{"id":' .. tostring(id) .. ',' .. string.sub(ARGV[i + 2], 2)
    redis.call('SET', stem .. tostring(id % capacity), message, 'PX', ARGV[2])
    redis.call('SET', marker, tostring(id), 'PX', ARGV[2])
    table.insert(replies, 1)
    table.insert(replies, id)
    table.insert(replies, message)
  end
end
return replies
"""


def _append(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> list[object]:
    capacity, ttl = int(args[0]), int(args[1]) / 1000
    replies: list[object] = []
    for i, body in enumerate(args[2:]):
        counter, marker, stem = keys[3 * i : 3 * i + 3]
        known = store.get(marker)
        if known is not None:
            text = known.decode()
            message_id = int(text.split(":", 1)[0])
            status = -1 if text.endswith(SENT_SUFFIX) else 0
            replies += [status, message_id, store.get(f"{stem}{message_id % capacity}") or b""]
        else:
            message_id = store.incrby(counter, 1)
            message = with_id(body, message_id)
            store.set(f"{stem}{message_id % capacity}", message, ttl)
            store.set(marker, str(message_id).encode(), ttl)
            replies += [1, message_id, message]
    return replies


APPEND = CacheScript(name="notifications_append", lua=_APPEND_LUA, python=_append)

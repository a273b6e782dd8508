"""The three atomic exposure scripts, each as a Lua twin (Redis) and a Python twin (memory).

All amounts are scaled integers in decimal text (see :mod:`tradeloom.risk.units`); a missing
counter reads as 0. An order's reservation record is ``side|remaining|reserved|account|symbol``
(``remaining`` in quantity units, ``reserved`` in money units).

* ``RESERVE`` checks every bound in order, the order-rate window among them, and only if all
  hold applies the order's increments and writes its record, in one atomic step. So concurrent
  orders of one account are checked one after another and can never jointly pass a bound. A
  window that admits the order records it at once (a later bound's refusal keeps it counted);
  the window shares ``Cache.hit_rate_limit``'s (``hit_window`` and its Lua twin).
* ``RELEASE`` undoes what is left of a reservation and deletes its record; a second release
  finds no record and changes nothing.
* ``APPLY_FILL`` books a fill once per fill id (a marker key remembers every applied id, not
  only the last): position and cash move, and the order's reservation shrinks; when nothing of
  the order remains open its reservation is released.
"""

from __future__ import annotations

from collections.abc import Sequence

from tradeloom.cache.port import SLIDING_WINDOW_LUA, CacheScript, ScriptStore

# RESERVE. KEYS: 1 record, 2 reserved, 3 cash flow, 4 open orders, 5 position, 6 buying,
# 7 selling, then the keys of the bounds' own (a rate window). ARGV: 1 record text, 2 side,
# 3 quantity, 4 money to reserve, 5 the bounds: one text of space-separated tokens (one
# argument rather than dozens: each argument costs the client its encoding), per bound either
#   'sum', term count, (sign, key index) per term, increment, limit; or
#   'rate', window key index, limit, window in microseconds, a member unique to this hit.
# Returns {0, 0} (reserved), {-1, 0} (this order id holds a reservation already: nothing
# changes) or {n, wait}: the 1-based number of the first bound refused, and for a rate bound
# the microseconds until an order would be admitted (else 0); nothing is reserved.
_RESERVE_LUA = (
    SLIDING_WINDOW_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0} end
local spec = {}
for token in string.gmatch(ARGV[5], '%S+') do spec[#spec + 1] = token end
local at, b = 1, 0
while at <= #spec do
  b = b + 1
  if spec[at] == 'rate' then
    local key = KEYS[tonumber(spec[at + 1])]
    local allowed, _, wait = hit_window(key, tonumber(spec[at + 2]), tonumber(spec[at + 3]),
      spec[at + 4])
    if allowed == 0 then return {b, wait} end
    at = at + 5
  else
    local terms = tonumber(spec[at + 1])
    local total = 0
    for t = 1, terms do
      local current = tonumber(redis.call('GET', KEYS[tonumber(spec[at + 2 * t + 1])]) or '0')
      total = total + tonumber(spec[at + 2 * t]) * current
    end
    at = at + 2 + 2 * terms
    if total + tonumber(spec[at]) > tonumber(spec[at + 1]) then return {b, 0} end
    at = at + 2
  end
end
redis.call('INCRBY', KEYS[2], ARGV[4])
redis.call('INCR', KEYS[4])
if ARGV[2] == 'buy' then
  redis.call('INCRBY', KEYS[6], ARGV[3])
else
  redis.call('INCRBY', KEYS[7], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1])
return {0, 0}
"""
)


def _counter(store: ScriptStore, key: str) -> int:
    value = store.get(key)
    return 0 if value is None else int(value)


def _reserve(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> list[int]:
    if store.get(keys[0]) is not None:
        return [-1, 0]
    spec = args[4].split()
    at, number = 0, 0
    while at < len(spec):
        number += 1
        if spec[at] == "rate":
            window = int(spec[at + 3]) / 1_000_000
            decision = store.hit_window(keys[int(spec[at + 1]) - 1], int(spec[at + 2]), window)
            if not decision.allowed:
                return [number, round(decision.retry_after * 1_000_000)]
            at += 5
            continue
        terms = int(spec[at + 1])
        total = sum(
            int(spec[at + 2 * t]) * _counter(store, keys[int(spec[at + 2 * t + 1]) - 1])
            for t in range(1, terms + 1)
        )
        at += 2 + 2 * terms
        if total + int(spec[at]) > int(spec[at + 1]):
            return [number, 0]
        at += 2
    store.incrby(keys[1], int(args[3]))
    store.incrby(keys[3], 1)
    store.incrby(keys[5] if args[1] == "buy" else keys[6], int(args[2]))
    store.set(keys[0], args[0].encode())
    return [0, 0]


RESERVE = CacheScript(name="risk_reserve", lua=_RESERVE_LUA, python=_reserve)

# RELEASE. KEYS: 1 record, 2 reserved, 3 open orders, 4 buying, 5 selling.
# Returns 1 when a reservation was released, 0 when there was none.
_RELEASE_LUA = """
local record = redis.call('GET', KEYS[1])
if not record then return 0 end
local side, remaining, reserved = string.match(record, '^(%a+)|(%-?%d+)|(%-?%d+)|')
redis.call('DECRBY', KEYS[2], reserved)
redis.call('DECR', KEYS[3])
if side == 'buy' then
  redis.call('DECRBY', KEYS[4], remaining)
else
  redis.call('DECRBY', KEYS[5], remaining)
end
redis.call('DEL', KEYS[1])
return 1
"""


def _release(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> int:
    record = store.get(keys[0])
    if record is None:
        return 0
    side, remaining, reserved, _ = record.decode().split("|", 3)
    store.incrby(keys[1], -int(reserved))
    store.incrby(keys[2], -1)
    store.incrby(keys[3] if side == "buy" else keys[4], -int(remaining))
    store.delete(keys[0])
    return 1


RELEASE = CacheScript(name="risk_release", lua=_RELEASE_LUA, python=_release)

# APPLY_FILL. KEYS: 1 fill marker, 2 order record, 3 position, 4 cash flow, 5 reserved,
# 6 open orders, 7 buying, 8 selling, 9 held symbols (newline-separated).
# ARGV: 1 marker TTL in ms, 2 side, 3 quantity, 4 signed cash change, 5 money the fill frees
# from the order's reservation at most, 6 symbol. Returns 1 when applied, 0 for a repeat.
_APPLY_FILL_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
if ARGV[2] == 'buy' then
  redis.call('INCRBY', KEYS[3], ARGV[3])
else
  redis.call('DECRBY', KEYS[3], ARGV[3])
end
redis.call('INCRBY', KEYS[4], ARGV[4])
local held = redis.call('GET', KEYS[9]) or ''
if not string.find('\\n' .. held .. '\\n', '\\n' .. ARGV[6] .. '\\n', 1, true) then
  if held == '' then held = ARGV[6] else held = held .. '\\n' .. ARGV[6] end
  redis.call('SET', KEYS[9], held)
end
local record = redis.call('GET', KEYS[2])
if not record then return 1 end
local side, remaining, reserved, rest = string.match(record, '^(%a+)|(%-?%d+)|(%-?%d+)|(.*)$')
remaining = tonumber(remaining)
reserved = tonumber(reserved)
local filled = math.min(tonumber(ARGV[3]), remaining)
local freed = math.min(tonumber(ARGV[5]), reserved)
remaining = remaining - filled
reserved = reserved - freed
if side == 'buy' then
  redis.call('DECRBY', KEYS[7], string.format('%d', filled))
else
  redis.call('DECRBY', KEYS[8], string.format('%d', filled))
end
if remaining <= 0 then
  redis.call('DECRBY', KEYS[5], string.format('%d', freed + reserved))
  redis.call('DECR', KEYS[6])
  redis.call('DEL', KEYS[2])
else
  redis.call('DECRBY', KEYS[5], string.format('%d', freed))
  redis.call('SET', KEYS[2], side .. '|' .. string.format('%d', remaining) .. '|'
    .. string.format('%d', reserved) .. '|' .. rest)
end
return 1
"""


def _apply_fill(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> int:
    if store.get(keys[0]) is not None:
        return 0
    store.set(keys[0], b"1", int(args[0]) / 1000)
    quantity, symbol = int(args[2]), args[5]
    store.incrby(keys[2], quantity if args[1] == "buy" else -quantity)
    store.incrby(keys[3], int(args[3]))
    held = (store.get(keys[8]) or b"").decode()
    if symbol not in held.split("\n"):
        store.set(keys[8], (f"{held}\n{symbol}" if held else symbol).encode())
    record = store.get(keys[1])
    if record is None:
        return 1
    side, remaining_text, reserved_text, rest = record.decode().split("|", 3)
    filled = min(quantity, int(remaining_text))
    freed = min(int(args[4]), int(reserved_text))
    remaining, reserved = int(remaining_text) - filled, int(reserved_text) - freed
    store.incrby(keys[6] if side == "buy" else keys[7], -filled)
    if remaining <= 0:
        store.incrby(keys[4], -(freed + reserved))
        store.incrby(keys[5], -1)
        store.delete(keys[1])
    else:
        store.incrby(keys[4], -freed)
        store.set(keys[1], f"{side}|{remaining}|{reserved}|{rest}".encode())
    return 1


APPLY_FILL = CacheScript(name="risk_apply_fill", lua=_APPLY_FILL_LUA, python=_apply_fill)

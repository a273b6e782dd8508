"""Last prices in the cache: newest wins, and a stale price reads as no price.

Each symbol's last update is kept under ``price:SYMBOL`` for ``ttl`` seconds (5 s by default):
a reader gets ``None`` rather than a price nobody has confirmed for longer than that, because a
stale price is dangerous (risk checks and market orders would act on it).

Writes go through one atomic script per batch that stores an update only when it is not older
than the one already there (by exchange time; on a tie the later write wins). So an update
delivered late, or by a second consumer process after a partition changed hands, never
overwrites a newer price. The stored value is ``<exchange time in µs>|<JSON of the update>``:
the prefix lets the Lua twin compare without decoding JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec

from tradeloom.cache.port import Cache, CacheScript, ScriptStore
from tradeloom.domain.events import PriceUpdate

PRICE_TTL = 5.0
KEY_PREFIX = "price:"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(PriceUpdate)

_SET_IF_NEWER_LUA = """
local ttl = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
  local stamp = tonumber(ARGV[2 * i])
  local value = ARGV[2 * i + 1]
  local current = redis.call('GET', key)
  local newer = true
  if current then
    local bar = string.find(current, '|', 1, true)
    if bar and tonumber(string.sub(current, 1, bar - 1)) > stamp then
      newer = false
    end
  end
  if newer then
    redis.call('SET', key, value, 'PX', ttl)
    written = written + 1
  end
end
return written
"""


def _set_if_newer(store: ScriptStore, keys: Sequence[str], args: Sequence[str]) -> int:
    ttl = int(args[0]) / 1000
    written = 0
    for i, key in enumerate(keys):
        stamp, value = int(args[2 * i + 1]), args[2 * i + 2]
        current = store.get(key)
        if current is not None and b"|" in current and int(current.split(b"|", 1)[0]) > stamp:
            continue
        store.set(key, value.encode(), ttl)
        written += 1
    return written


SET_IF_NEWER = CacheScript(
    name="last_price_set_if_newer", lua=_SET_IF_NEWER_LUA, python=_set_if_newer
)


def exchange_micros(update: PriceUpdate) -> int:
    delta = update.exchange_time - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def newest_per_symbol(updates: Iterable[PriceUpdate]) -> dict[str, PriceUpdate]:
    """The newest update of each symbol in a batch (ties: the later one in the batch)."""
    newest: dict[str, PriceUpdate] = {}
    for update in updates:
        seen = newest.get(update.symbol)
        if seen is None or update.exchange_time >= seen.exchange_time:
            newest[update.symbol] = update
    return newest


class LastPrices:
    """Reads and writes the last price of each symbol through the cache port."""

    def __init__(self, cache: Cache, ttl: float = PRICE_TTL) -> None:
        if ttl <= 0:
            raise ValueError("the last-price TTL must be positive")
        self._cache = cache
        self._ttl_ms = str(round(ttl * 1000))

    async def record(self, updates: Iterable[PriceUpdate]) -> int:
        """Store the newest update of each symbol unless the cache holds a newer one.
        Returns how many symbols were written."""
        newest = newest_per_symbol(updates)
        if not newest:
            return 0
        keys: list[str] = []
        args: list[str] = [self._ttl_ms]
        for symbol, update in newest.items():
            keys.append(KEY_PREFIX + symbol)
            stamp = exchange_micros(update)
            args += [str(stamp), f"{stamp}|{_encoder.encode(update).decode()}"]
        written = await self._cache.run_script(SET_IF_NEWER, keys, args)
        return int(written) if isinstance(written, int) else 0

    async def last(self, symbol: str) -> PriceUpdate | None:
        """The symbol's last price, or None when there is none younger than the TTL."""
        return (await self.last_many([symbol]))[symbol]

    async def last_many(self, symbols: Sequence[str]) -> dict[str, PriceUpdate | None]:
        values = await self._cache.get_many([KEY_PREFIX + symbol for symbol in symbols])
        return {
            symbol: None if value is None else _decoder.decode(value.split(b"|", 1)[1])
            for symbol, value in zip(symbols, values, strict=True)
        }

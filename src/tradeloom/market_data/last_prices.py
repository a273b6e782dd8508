"""Last prices in the cache: newest wins, and a stale price reads as no price.

Each symbol's last update is kept under ``price:SYMBOL`` until ``ttl`` seconds (5 s by
default) after its exchange time: a reader gets ``None`` rather than a price older than that,
because a stale price is dangerous (risk checks and market orders would act on it). An update
already older than the TTL when it arrives (a backlog replayed after an outage, a recorded
file) is never written, and a read also checks the age, so a clock step cannot serve one.

Writes go through one atomic script per batch that stores an update only when it is not older
than the one already there (by exchange time; on a tie the later write wins). So an update
delivered late, or by a second consumer process after a partition changed hands, never
overwrites a newer price. The stored value is ``<exchange time in µs>|<JSON of the update>``:
the prefix lets the Lua twin compare without decoding JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from tradeloom.cache.port import Cache, CacheScript, ScriptStore
from tradeloom.domain.events import PriceUpdate
from tradeloom.domain.last_price import newest_per_symbol
from tradeloom.domain.time import Clock

PRICE_TTL = 5.0
KEY_PREFIX = "price:"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(PriceUpdate)

_SET_IF_NEWER_LUA = """
local written = 0
for i, key in ipairs(KEYS) do
  local stamp = tonumber(ARGV[3 * i - 2])
  local ttl = tonumber(ARGV[3 * i - 1])
  local value = ARGV[3 * i]
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
    written = 0
    for i, key in enumerate(keys):
        stamp, ttl, value = int(args[3 * i]), int(args[3 * i + 1]) / 1000, args[3 * i + 2]
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


class LastPrices:
    """Reads and writes the last price of each symbol through the cache port."""

    def __init__(self, cache: Cache, clock: Clock, ttl: float = PRICE_TTL) -> None:
        if ttl <= 0:
            raise ValueError("the last-price TTL must be positive")
        self._cache = cache
        self._clock = clock
        self._ttl = timedelta(seconds=ttl)

    async def record(self, updates: Iterable[PriceUpdate]) -> int:
        """Store the newest update of each symbol unless the cache holds a newer one.
        Returns how many symbols were written."""
        now = self._clock.now()
        keys: list[str] = []
        args: list[str] = []
        for symbol, update in newest_per_symbol(updates).items():
            left_ms = (update.exchange_time + self._ttl - now) // timedelta(milliseconds=1)
            if left_ms <= 0:
                continue  # already stale: never served
            stamp = exchange_micros(update)
            keys.append(KEY_PREFIX + symbol)
            args += [str(stamp), str(left_ms), f"{stamp}|{_encoder.encode(update).decode()}"]
        if not keys:
            return 0
        written = await self._cache.run_script(SET_IF_NEWER, keys, args)
        return int(written) if isinstance(written, int) else 0

    async def last(self, symbol: str) -> PriceUpdate | None:
        """The symbol's last price, or None when there is none younger than the TTL."""
        return (await self.last_many([symbol]))[symbol]

    async def last_many(self, symbols: Sequence[str]) -> dict[str, PriceUpdate | None]:
        values = await self._cache.get_many([self.key(symbol) for symbol in symbols])
        return self.current(zip(symbols, values, strict=True))

    @staticmethod
    def key(symbol: str) -> str:
        """The cache key of ``symbol``'s last price, for a caller that reads it with others."""
        return KEY_PREFIX + symbol

    def current(self, values: Iterable[tuple[str, bytes | None]]) -> dict[str, PriceUpdate | None]:
        """Decode ``(symbol, value read at key(symbol))`` pairs: None when there was no value
        or it is older than the TTL."""
        oldest = self._clock.now() - self._ttl
        prices: dict[str, PriceUpdate | None] = {}
        for symbol, value in values:
            price = None if value is None else _decoder.decode(value.split(b"|", 1)[1])
            prices[symbol] = price if price and price.exchange_time > oldest else None
        return prices

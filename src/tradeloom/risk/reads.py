"""What one risk check reads, in one cache round trip.

A check needs the user's limits and trading states, the order symbol's last price, the
account's counters (cash flow, reserved, open orders), and, to value the account for the
concentration rule, the position and last price of every symbol the account holds. All of it is
one ``get_many`` (one MGET on Redis, so one consistent snapshot of those keys).

The symbols an account holds are listed under its ``held`` key, which only ever grows (fills
append to it). So :class:`CheckReader` remembers, per account, the symbols it saw listed, and
reads their positions and prices along with the rest; the ``held`` value read in the same call
is the truth. Only when it lists a symbol not yet remembered (the first check of an account in
this process, or its first fill of a new symbol) does a second round trip read the new
symbols' positions and prices. Memory: one tuple of symbols per account checked here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice

from tradeloom.cache.port import Cache
from tradeloom.domain.events import PriceUpdate
from tradeloom.market_data.last_prices import LastPrices
from tradeloom.risk.exposure import AccountExposure, Exposure, account_exposure, held_symbols
from tradeloom.risk.limits import LimitsStore, UserRiskSettings
from tradeloom.risk.rules import mark_price

_SETTINGS = 3  # values of LimitsStore.keys_for
_COUNTERS = 4  # values of Exposure.counter_keys; the last is the held list


@dataclass(frozen=True, slots=True)
class CheckInputs:
    settings: UserRiskSettings
    quote: PriceUpdate | None  # the order symbol's last price; None: none current
    exposure: AccountExposure
    marks: Mapping[str, Decimal | None]  # every other symbol with a position: its mark


class CheckReader:
    """Reads :class:`CheckInputs` (see the module docstring). Raises what the cache raises."""

    def __init__(
        self, cache: Cache, limits: LimitsStore, last_prices: LastPrices, exposure: Exposure
    ) -> None:
        self._cache = cache
        self._limits = limits
        self._last_prices = last_prices
        self._exposure = exposure
        self._held: dict[str, tuple[str, ...]] = {}

    async def read(self, user_id: str, account_id: str, symbol: str) -> CheckInputs:
        known = self._held.get(account_id, ())
        others = [s for s in known if s != symbol]
        keys = [
            *self._limits.keys_for(user_id),
            *self._exposure.counter_keys(account_id),
            self._last_prices.key(symbol),
            *(self._exposure.position_key(account_id, s) for s in known),
            *(self._last_prices.key(s) for s in others),
        ]
        values = iter(await self._cache.get_many(keys))
        settings = self._limits.settings_from(*islice(values, _SETTINGS))
        counters = list(islice(values, _COUNTERS))
        prices = {symbol: next(values)}
        positions = {s: next(values) for s in known}
        prices.update((s, next(values)) for s in others)
        held = held_symbols(counters[-1])
        if tuple(held) != known:
            await self._read_new(account_id, held, positions, prices)
        exposure = account_exposure(counters, ((s, positions[s]) for s in held))
        valued = [s for s in exposure.positions if s != symbol]
        quotes = self._last_prices.current([(s, prices[s]) for s in [symbol, *valued]])
        return CheckInputs(
            settings=settings,
            quote=quotes[symbol],
            exposure=exposure,
            marks={s: mark_price(quotes[s]) for s in valued},
        )

    async def _read_new(
        self,
        account_id: str,
        held: Sequence[str],
        positions: dict[str, bytes | None],
        prices: dict[str, bytes | None],
    ) -> None:
        """Read the symbols ``held`` lists that were not read yet into ``positions`` and
        ``prices``, and remember ``held`` for the account's next check."""
        new = [s for s in held if s not in positions]
        unpriced = [s for s in new if s not in prices]
        if new:
            keys = [
                *(self._exposure.position_key(account_id, s) for s in new),
                *(self._last_prices.key(s) for s in unpriced),
            ]
            values = await self._cache.get_many(keys)
            positions.update(zip(new, values[: len(new)], strict=True))
            prices.update(zip(unpriced, values[len(new) :], strict=True))
        self._held[account_id] = tuple(held)

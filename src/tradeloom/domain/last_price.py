"""Which price update is the newest one per symbol, so an older one never overwrites it.

Updates of one symbol can reach the consumer out of order (a reconnect replays a snapshot, two
feeds quote the same symbol, the bus redelivers). The newest is decided by ``exchange_time``;
of two updates with the same time, the one that arrived later wins (arrival order breaks ties).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tradeloom.domain.events import PriceUpdate


def is_newer(update: PriceUpdate, last_seen: PriceUpdate | None) -> bool:
    """True when ``update`` may replace ``last_seen`` as the symbol's latest price."""
    if last_seen is None:
        return True
    return update.exchange_time >= last_seen.exchange_time


@dataclass
class LastPriceGuard:
    """Remembers the exchange time of the newest update seen per symbol.

    ``admit`` answers whether an update is newer than every one admitted before for its symbol
    and, if so, records it. Updates it refuses are counted in ``stale``. Not thread-safe: one
    guard belongs to one consumer task (updates of one symbol are consumed in order by one task).
    """

    stale: int = 0
    _newest: dict[str, datetime] = field(default_factory=dict, repr=False)

    def admit(self, update: PriceUpdate) -> bool:
        newest = self._newest.get(update.symbol)
        if newest is not None and update.exchange_time < newest:
            self.stale += 1
            return False
        self._newest[update.symbol] = update.exchange_time
        return True

    def newest(self, symbol: str) -> datetime | None:
        """The exchange time of the newest update admitted for ``symbol``, if any."""
        return self._newest.get(symbol)

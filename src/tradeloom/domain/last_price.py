"""Which price update is the newest one per symbol, so an older one never overwrites it.

Updates of one symbol can reach the consumer out of order (a reconnect replays a snapshot, two
feeds quote the same symbol, the bus redelivers). The newest is decided by ``exchange_time``;
of two updates with the same time, the one that arrived later wins (arrival order breaks ties).
"""

from __future__ import annotations

from collections.abc import Iterable

from tradeloom.domain.events import PriceUpdate


def is_newer(update: PriceUpdate, last_seen: PriceUpdate | None) -> bool:
    """True when ``update`` may replace ``last_seen`` as the symbol's latest price."""
    if last_seen is None:
        return True
    return update.exchange_time >= last_seen.exchange_time


def newest_per_symbol(updates: Iterable[PriceUpdate]) -> dict[str, PriceUpdate]:
    """The newest update of each symbol among ``updates``, by :func:`is_newer` (of two with
    the same exchange time, the later in ``updates`` wins)."""
    newest: dict[str, PriceUpdate] = {}
    for update in updates:
        if is_newer(update, newest.get(update.symbol)):
            newest[update.symbol] = update
    return newest

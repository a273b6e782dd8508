"""Market data: a simulated exchange, feeds in several wire formats, and their normalization.

Every feed client yields the canonical :class:`~tradeloom.domain.events.PriceUpdate`; what
happens to the updates next (bus, last-price cache, candles, fan-out) is wired elsewhere.
"""

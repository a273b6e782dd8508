"""Pre-trade risk: pluggable rules, per-user limits in the cache, exposures reserved atomically.

Fails closed: when risk state cannot be read, or a price is unknown or stale, orders are
rejected (``risk.unavailable``, ``risk.no_price``).
"""

from tradeloom.risk.engine import Reservation, RiskEngine
from tradeloom.risk.errors import RiskRejected
from tradeloom.risk.limits import PLATFORM, LimitsStore, RiskLimits, TradingState

__all__ = [
    "PLATFORM",
    "LimitsStore",
    "Reservation",
    "RiskEngine",
    "RiskLimits",
    "RiskRejected",
    "TradingState",
]

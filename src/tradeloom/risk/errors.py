"""Why the risk engine refused an order: one exception, a machine-readable code per reason.

The web tier maps every :class:`RiskRejected` to one HTTP answer and shows ``message``; callers
branch on ``code`` only. The codes are the constants below.
"""

from __future__ import annotations

from tradeloom.domain.errors import DomainError

UNAVAILABLE = "risk.unavailable"
NO_PRICE = "risk.no_price"
UNKNOWN_ACCOUNT = "risk.unknown_account"
NOT_OWNER = "risk.account_not_owned"
UNKNOWN_SYMBOL = "risk.unknown_symbol"
HALTED = "risk.halted"
REDUCE_ONLY = "risk.reduce_only"
MAX_ORDER_NOTIONAL = "risk.max_order_notional"
ORDER_RATE = "risk.order_rate"
MAX_OPEN_ORDERS = "risk.max_open_orders"
BUYING_POWER = "risk.buying_power"
CONCENTRATION = "risk.concentration"


class RiskRejected(DomainError):
    """A pre-trade check refused the order; nothing was reserved for it."""

    code = "risk.rejected"

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, code=code)

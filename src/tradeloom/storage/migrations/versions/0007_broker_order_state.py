"""Execution knows which of its orders are still live at the broker: ``broker_orders`` gains
``acknowledged_at``, ``closed_at`` and ``closed_as``, and a partial index of the open rows.

Rows sent before this revision are filled in once: acknowledged when a report of theirs was
recorded (every recorded report key is one the broker sent about an order it had), closed
when execution recorded their rejection, cancel or expiry, or when the OMS already shows them
finished (a final fill is recorded by fill id alone, so only the order row tells it). An
order whose final fill is still on its way to the OMS while this runs stays open, and the next
reconciliation asks the broker about it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tradeloom.storage.schema import UtcDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One pass over broker_reports (grouped) joined to broker_orders: broker_reports has no index
# on order_id, so a subquery per row would scan it once per order. UPDATE ... FROM needs
# SQLite 3.33 or later (PostgreSQL has it always).
_ACKNOWLEDGED = """
UPDATE broker_orders SET acknowledged_at = earliest.received_at
FROM (
    SELECT order_id, MIN(received_at) AS received_at FROM broker_reports GROUP BY order_id
) AS earliest
WHERE broker_orders.order_id = earliest.order_id
"""

# Execution's own keys first ("BrokerRejected:<order id>" and the like), then the OMS's rows.
_CLOSED_BY_REPORT = """
UPDATE broker_orders SET
    closed_as = '{closed_as}',
    closed_at = (SELECT r.received_at FROM broker_reports r
        WHERE r.report_id = '{prefix}' || broker_orders.order_id)
WHERE closed_at IS NULL AND EXISTS (
    SELECT 1 FROM broker_reports r WHERE r.report_id = '{prefix}' || broker_orders.order_id
)
"""
_REPORT_CLOSINGS = (
    ("BrokerRejected:", "rejected"),
    ("BrokerCanceled:", "canceled"),
    ("BrokerExpired:", "expired"),
)

_CLOSED_BY_ORDER = """
UPDATE broker_orders SET
    closed_as = (SELECT o.status FROM orders o WHERE o.order_id = broker_orders.order_id),
    closed_at = (SELECT o.updated_at FROM orders o WHERE o.order_id = broker_orders.order_id)
WHERE closed_at IS NULL AND EXISTS (
    SELECT 1 FROM orders o WHERE o.order_id = broker_orders.order_id
    AND o.status IN ('filled', 'canceled', 'rejected', 'expired')
)
"""


def upgrade() -> None:
    op.add_column("broker_orders", sa.Column("acknowledged_at", UtcDateTime(), nullable=True))
    op.add_column("broker_orders", sa.Column("closed_at", UtcDateTime(), nullable=True))
    op.add_column("broker_orders", sa.Column("closed_as", sa.String(16), nullable=True))
    op.execute(_ACKNOWLEDGED)
    for prefix, closed_as in _REPORT_CLOSINGS:
        op.execute(_CLOSED_BY_REPORT.format(prefix=prefix, closed_as=closed_as))
    op.execute(_CLOSED_BY_ORDER)
    op.create_index(
        "ix_broker_orders_open",
        "broker_orders",
        ["order_id"],
        postgresql_where=sa.text("closed_at IS NULL"),
        sqlite_where=sa.text("closed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_broker_orders_open", table_name="broker_orders")
    with op.batch_alter_table("broker_orders") as batch:
        batch.drop_column("closed_as")
        batch.drop_column("closed_at")
        batch.drop_column("acknowledged_at")

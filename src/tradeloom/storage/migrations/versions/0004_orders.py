"""Orders (OMS command side) and what execution sent to the broker.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tradeloom.storage.schema import ExactDecimal, UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("order_type", sa.String(16), nullable=False),
        sa.Column("time_in_force", sa.String(8), nullable=False),
        sa.Column("quantity", ExactDecimal(), nullable=False),
        sa.Column("limit_price", ExactDecimal(), nullable=True),
        sa.Column("stop_price", ExactDecimal(), nullable=True),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("status_before_request", sa.String(24), nullable=True),
        sa.Column("filled_quantity", ExactDecimal(), nullable=False),
        sa.Column("average_fill_price", ExactDecimal(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name="pk_orders"),
        sa.UniqueConstraint(
            "account_id", "client_order_id", name="uq_orders_account_id_client_order_id"
        ),
    )
    op.create_index("ix_orders_account_id_status", "orders", ["account_id", "status"])
    op.create_table(
        "order_fills",
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("fill_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "fill_id", name="pk_order_fills"),
    )
    op.create_table(
        "broker_orders",
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("correlation_id", sa.String(64), nullable=False),
        sa.Column("causation_id", sa.String(64), nullable=False),
        sa.Column("broker_order_id", sa.String(64), nullable=True),
        sa.Column("sent_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name="pk_broker_orders"),
    )
    op.create_table(
        "broker_reports",
        sa.Column("report_id", sa.String(128), nullable=False),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("report_id", name="pk_broker_reports"),
    )

    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("processed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name="pk_processed_events"),
    )


def downgrade() -> None:
    op.drop_table("processed_events")
    op.drop_table("broker_reports")
    op.drop_table("broker_orders")
    op.drop_table("order_fills")
    op.drop_index("ix_orders_account_id_status", table_name="orders")
    op.drop_table("orders")

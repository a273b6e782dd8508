"""The read side: the order read model and its event history, positions and their fills.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tradeloom.storage.schema import ExactDecimal, UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "order_views",
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("order_type", sa.String(16), nullable=False),
        sa.Column("time_in_force", sa.String(8), nullable=False),
        sa.Column("quantity", ExactDecimal(), nullable=False),
        sa.Column("filled_quantity", ExactDecimal(), nullable=False),
        sa.Column("remaining_quantity", ExactDecimal(), nullable=False),
        sa.Column("average_fill_price", ExactDecimal(), nullable=True),
        sa.Column("limit_price", ExactDecimal(), nullable=True),
        sa.Column("stop_price", ExactDecimal(), nullable=True),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("is_open", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.String(64), nullable=False),
        sa.Column("submitted_at", UtcDateTime(), nullable=False),
        sa.Column("accepted_at", UtcDateTime(), nullable=True),
        sa.Column("last_fill_at", UtcDateTime(), nullable=True),
        sa.Column("closed_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("last_event_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name="pk_order_views"),
    )
    op.create_index(
        "ix_order_views_account_id_submitted_at_order_id",
        "order_views",
        ["account_id", "submitted_at", "order_id"],
    )
    op.create_table(
        "order_history",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("correlation_id", sa.String(64), nullable=False),
        sa.Column("event", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_order_history"),
    )
    op.create_index(
        "ix_order_history_order_id_occurred_at", "order_history", ["order_id", "occurred_at"]
    )
    op.create_table(
        "positions",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("quantity", ExactDecimal(), nullable=False),
        sa.Column("cost_basis", ExactDecimal(), nullable=False),
        sa.Column("realized_pnl", ExactDecimal(), nullable=False),
        sa.Column("fees", ExactDecimal(), nullable=False),
        sa.Column("fill_count", sa.Integer(), nullable=False),
        sa.Column("last_filled_at", UtcDateTime(), nullable=False),
        sa.Column("last_fill_id", sa.String(64), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "symbol", name="pk_positions"),
    )
    op.create_table(
        "position_fills",
        sa.Column("fill_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("quantity", ExactDecimal(), nullable=False),
        sa.Column("price", ExactDecimal(), nullable=False),
        sa.Column("fee", ExactDecimal(), nullable=False),
        sa.Column("filled_at", UtcDateTime(), nullable=False),
        sa.Column("applied_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("fill_id", name="pk_position_fills"),
    )
    op.create_index(
        "ix_position_fills_account_id_symbol_filled_at_fill_id",
        "position_fills",
        ["account_id", "symbol", "filled_at", "fill_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_position_fills_account_id_symbol_filled_at_fill_id", "position_fills")
    op.drop_table("position_fills")
    op.drop_table("positions")
    op.drop_index("ix_order_history_order_id_occurred_at", "order_history")
    op.drop_table("order_history")
    op.drop_index("ix_order_views_account_id_submitted_at_order_id", "order_views")
    op.drop_table("order_views")

"""OHLCV candles.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tradeloom.storage.schema import ExactDecimal, UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "candles",
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("interval", sa.String(8), nullable=False),
        sa.Column("start", UtcDateTime(), nullable=False),
        sa.Column("open", ExactDecimal(), nullable=False),
        sa.Column("high", ExactDecimal(), nullable=False),
        sa.Column("low", ExactDecimal(), nullable=False),
        sa.Column("close", ExactDecimal(), nullable=False),
        sa.Column("volume", ExactDecimal(), nullable=False),
        sa.Column("trades", sa.Integer(), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "interval", "start", name="pk_candles"),
    )


def downgrade() -> None:
    op.drop_table("candles")

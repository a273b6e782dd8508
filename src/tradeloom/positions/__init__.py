"""Positions, P&L and cash: a projection of fill events and the queries over it."""

from tradeloom.positions.projection import PositionProjection
from tradeloom.positions.queries import AccountSummary, PositionQueries, PositionView

__all__ = ["AccountSummary", "PositionProjection", "PositionQueries", "PositionView"]

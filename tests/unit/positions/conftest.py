"""Fixtures of the positions tests: a migrated database on SQLite and on the shared
PostgreSQL database (every test names its own accounts, so none assumes empty tables)."""

from __future__ import annotations

import pytest

from tests.unit.positions.world import START
from tradeloom.domain.time import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)

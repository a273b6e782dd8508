"""Group commit of new orders on SQLite (the embedded default): batching, duplicates inside
and across batches, a poisoned row, cancellation. The scenarios live in
:mod:`tests.unit.oms.placement_world`; the PostgreSQL integration test runs them too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.oms.placement_world import SCENARIOS, Desk, Scenario, open_desk
from tradeloom.storage.migrate import upgrade_database


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    url = f"sqlite:///{tmp_path}/placement.db"
    await upgrade_database(url)
    async with open_desk(url, "acc-1") as made:
        yield made


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_placement(desk: Desk, scenario: Scenario) -> None:
    await scenario(desk)

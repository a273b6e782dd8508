"""The owner lookup remembers owners (they never change) but not unknown accounts."""

from __future__ import annotations

from tests.unit.notifications.builders import Accounts
from tradeloom.notifications import MemoizedOwners


async def test_an_owner_is_read_once_and_remembered() -> None:
    accounts = Accounts({"A1": "alice"})
    owners = MemoizedOwners(accounts)
    assert [await owners.owner_of("A1") for _ in range(3)] == ["alice"] * 3
    assert accounts.reads == 1


async def test_an_unknown_account_is_asked_again_and_found_once_it_exists() -> None:
    accounts = Accounts()
    owners = MemoizedOwners(accounts)
    assert await owners.owner_of("A9") is None
    accounts.owners["A9"] = "carol"
    assert await owners.owner_of("A9") == "carol"
    assert accounts.reads == 2

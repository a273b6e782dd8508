"""Who owns an account: the one fact the notifier needs to route an event to a user.

An account's owner never changes, so a found owner is remembered for the life of the process
(one entry per account, a few tens of bytes each). An account not found is not remembered:
asking again later finds it once it exists.
"""

from __future__ import annotations

from typing import Protocol

from tradeloom.domain.accounts import Account


class OwnerLookup(Protocol):
    async def owner_of(self, account_id: str) -> str | None:
        """The user who owns ``account_id``; None when there is no such account. Raises when
        the accounts cannot be read (the caller retries)."""


class AccountSource(Protocol):
    """Where accounts come from; ``AccountRepository`` is one."""

    async def get(self, account_id: str) -> Account | None: ...


class MemoizedOwners:
    """An :class:`OwnerLookup` over an :class:`AccountSource`, remembering every owner found."""

    def __init__(self, accounts: AccountSource) -> None:
        self._accounts = accounts
        self._owners: dict[str, str] = {}

    async def owner_of(self, account_id: str) -> str | None:
        owner = self._owners.get(account_id)
        if owner is None:
            account = await self._accounts.get(account_id)
            if account is None:
                return None
            owner = self._owners[account_id] = account.owner
        return owner

"""Trading accounts: created by an administrator (``tradeloom accounts create``), each with an
owner and an opening cash balance, kept in the ``accounts`` table."""

from tradeloom.accounts.repository import AccountRepository, create_account

__all__ = ["AccountRepository", "create_account"]

"""API tokens on SQLite and PostgreSQL: hashed at rest, scoped to their user, revocable."""

from __future__ import annotations

import pytest

from tradeloom.users.model import TokenLimitReached, TokenNotFound
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import UserService
from tradeloom.users.tokens import TOKEN_PREFIX, ApiTokens

PASSWORD = "correct horse battery"


async def test_an_issued_token_authenticates_its_user(
    users: UserService, tokens: ApiTokens, name: str
) -> None:
    await users.register(name, PASSWORD)
    issued = await tokens.issue(name, "bot")
    assert issued.token.startswith(TOKEN_PREFIX)
    assert len(issued.token) > 40
    found = await tokens.authenticate(issued.token)
    assert found is not None
    user, token_id = found
    assert (user.username, token_id) == (name, issued.info.token_id)


@pytest.mark.parametrize("token", ["", "tl_", "tl_guess", "not-a-token"])
async def test_an_unknown_token_authenticates_nobody(
    users: UserService, tokens: ApiTokens, name: str, token: str
) -> None:
    await users.register(name, PASSWORD)
    issued = await tokens.issue(name, "bot")
    assert await tokens.authenticate(token) is None
    assert await tokens.authenticate(issued.token[:-1]) is None


async def test_a_user_lists_and_revokes_only_their_own_tokens(
    users: UserService, tokens: ApiTokens, name: str
) -> None:
    await users.register(f"{name}-a", PASSWORD)
    await users.register(f"{name}-b", PASSWORD)
    first = await tokens.issue(f"{name}-a", "one")
    second = await tokens.issue(f"{name}-a", "two")
    others = await tokens.issue(f"{name}-b", "theirs")
    assert [t.name for t in await tokens.list_for(f"{name}-a")] == ["one", "two"]

    with pytest.raises(TokenNotFound):
        await tokens.revoke(f"{name}-a", others.info.token_id)
    await tokens.revoke(f"{name}-a", first.info.token_id)
    assert await tokens.authenticate(first.token) is None
    assert await tokens.authenticate(second.token) is not None
    assert await tokens.authenticate(others.token) is not None
    with pytest.raises(TokenNotFound):
        await tokens.revoke(f"{name}-a", first.info.token_id)


async def test_a_user_holds_at_most_the_cap(
    users: UserService, tokens: ApiTokens, name: str
) -> None:
    await users.register(name, PASSWORD)
    held = [await tokens.issue(name, f"t{i}") for i in range(3)]
    with pytest.raises(TokenLimitReached):
        await tokens.issue(name, "one too many")
    await tokens.revoke(name, held[0].info.token_id)
    await tokens.issue(name, "room again")


async def test_tokens_of_a_disabled_or_deleted_user_authenticate_nobody(
    users: UserService, repository: UserRepository, tokens: ApiTokens, name: str
) -> None:
    await users.register(name, PASSWORD)
    issued = await tokens.issue(name, "bot")
    await repository.set_disabled(name, True)
    assert await tokens.authenticate(issued.token) is None
    await repository.delete(name)
    assert await tokens.list_for(name) == []

"""API tokens on SQLite and PostgreSQL: hashed at rest, scoped to their user, revocable."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.helpers import statements_of
from tests.unit.web.world import FailingCache
from tradeloom.accounts.repository import AccountRepository
from tradeloom.cache.memory import MemoryCache
from tradeloom.cache.port import Cache
from tradeloom.domain.accounts import DuplicateAccount
from tradeloom.domain.time import ManualClock
from tradeloom.storage.database import Database
from tradeloom.users.credentials_version import KEY, CredentialsVersion
from tradeloom.users.model import TokenLimitReached, TokenNotFound
from tradeloom.users.passwords import CHEAP_PARAMETERS, Passwords
from tradeloom.users.repository import UserRepository
from tradeloom.users.service import UserService
from tradeloom.users.tokens import TOKEN_PREFIX, ApiTokens, IssuedToken

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


# --- remembered tokens (a process's memory of what a token authenticates) -----------------


class Seconds:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache() -> FailingCache:
    return FailingCache(MemoryCache())


@pytest.fixture
def seconds() -> Seconds:
    return Seconds()


def process(database: Database, cache: Cache, seconds: Seconds) -> ApiTokens:
    """The token store of one web process; processes share the database and the cache."""
    return ApiTokens(database, version=CredentialsVersion(cache), remember_for=30.0, timer=seconds)


@dataclass
class Held:
    tokens: ApiTokens  # of the process that remembers the token
    issued: IssuedToken


@pytest.fixture
async def held(
    users: UserService, database: Database, cache: FailingCache, seconds: Seconds, name: str
) -> Held:
    """A user's token, authenticated once by a process that now remembers it."""
    await users.register(name, PASSWORD)
    tokens = process(database, cache, seconds)
    issued = await tokens.issue(name, "bot")
    assert await tokens.authenticate(issued.token) is not None
    return Held(tokens, issued)


def queries(sent: list[str]) -> list[str]:
    return [s for s in sent if not s.startswith("BEGIN")]  # SQLite sends its BEGIN too


async def test_a_remembered_token_is_not_read_from_the_database_again(
    held: Held, database: Database, name: str
) -> None:
    with statements_of(database) as sent:
        again = await held.tokens.authenticate(held.issued.token)
    assert queries(sent) == []
    assert again is not None
    assert (again[0].username, again[1]) == (name, held.issued.info.token_id)


async def test_a_token_revoked_in_one_process_authenticates_nobody_in_another_at_once(
    users: UserService, database: Database, cache: FailingCache, seconds: Seconds, name: str
) -> None:
    await users.register(name, PASSWORD)
    here, there = process(database, cache, seconds), process(database, cache, seconds)
    issued = await here.issue(name, "bot")
    kept = await here.issue(name, "kept")
    assert await here.authenticate(issued.token) is not None  # remembered here
    assert await here.authenticate(kept.token) is not None
    await there.revoke(name, issued.info.token_id)
    assert await here.authenticate(issued.token) is None
    assert await here.authenticate(kept.token) is not None


async def test_a_user_disabled_in_one_process_is_refused_in_another_at_once(
    held: Held, database: Database, cache: FailingCache, clock: ManualClock, name: str
) -> None:
    here, issued = held.tokens, held.issued
    there = UserRepository(database, clock, version=CredentialsVersion(cache))
    await there.set_disabled(name, True)
    assert await here.authenticate(issued.token) is None
    await there.set_disabled(name, False)
    assert await here.authenticate(issued.token) is not None
    await there.delete(name)
    assert await here.authenticate(issued.token) is None


class Interleaved(Database):
    """Runs ``after_read`` once right after a read's connection is given back, and
    ``before_commit`` once inside a write transaction, after its statements and before its
    commit: the two moments where another process's request or change can slip in."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.after_read: Callable[[], Awaitable[object]] | None = None
        self.before_commit: Callable[[], Awaitable[object]] | None = None

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with super().connect() as conn:
            yield conn
        hook, self.after_read = self.after_read, None
        if hook is not None:
            await hook()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with super().transaction() as conn:
            yield conn
            hook, self.before_commit = self.before_commit, None
            if hook is not None:
                await hook()


@pytest.fixture
async def interleaved(database: Database) -> AsyncIterator[Interleaved]:
    made = Interleaved(database.url)
    yield made
    await made.dispose()


async def test_a_request_racing_a_revoke_is_not_trusted_after_it(
    users: UserService, interleaved: Interleaved, cache: FailingCache, seconds: Seconds, name: str
) -> None:
    """A request of another process reads the token while the revoke is not committed yet:
    it is answered as before the revoke, and the next request is refused."""
    await users.register(name, PASSWORD)
    here, there = process(interleaved, cache, seconds), process(interleaved, cache, seconds)
    issued = await there.issue(name, "bot")

    async def racing_request() -> None:
        assert await here.authenticate(issued.token) is not None

    interleaved.before_commit = racing_request
    await there.revoke(name, issued.info.token_id)
    assert interleaved.before_commit is None  # the race did happen
    assert await here.authenticate(issued.token) is None


async def test_a_request_that_read_the_database_before_a_revoke_is_not_trusted_after_it(
    users: UserService, interleaved: Interleaved, cache: FailingCache, seconds: Seconds, name: str
) -> None:
    """The whole revoke runs between a request's database read and its remembering."""
    await users.register(name, PASSWORD)
    here, there = process(interleaved, cache, seconds), process(interleaved, cache, seconds)
    issued = await there.issue(name, "bot")
    interleaved.after_read = lambda: there.revoke(name, issued.info.token_id)
    assert await here.authenticate(issued.token) is not None  # read before the revoke
    assert interleaved.after_read is None
    assert await here.authenticate(issued.token) is None


async def test_a_request_racing_a_disable_is_not_trusted_after_it(
    users: UserService,
    interleaved: Interleaved,
    cache: FailingCache,
    seconds: Seconds,
    clock: ManualClock,
    name: str,
) -> None:
    await users.register(name, PASSWORD)
    here = process(interleaved, cache, seconds)
    issued = await here.issue(name, "bot")

    async def racing_request() -> None:
        assert await here.authenticate(issued.token) is not None

    interleaved.before_commit = racing_request
    await UserRepository(interleaved, clock, version=CredentialsVersion(cache)).set_disabled(
        name, True
    )
    assert interleaved.before_commit is None
    assert await here.authenticate(issued.token) is None


async def test_a_cache_that_lost_the_version_trusts_nothing_remembered(
    held: Held, database: Database, cache: FailingCache, name: str
) -> None:
    """Redis restarted (it keeps nothing): a fresh random version, so every token is read
    again, and a user disabled behind the platform's back meanwhile is refused."""
    tokens, issued = held.tokens, held.issued
    await UserRepository(database).set_disabled(name, True)  # no version: behind our back
    await cache.delete(KEY)
    assert await tokens.authenticate(issued.token) is None


async def test_a_token_is_remembered_for_a_bounded_time(
    held: Held, database: Database, seconds: Seconds, name: str
) -> None:
    tokens, issued = held.tokens, held.issued
    await UserRepository(database).set_disabled(name, True)  # no version: behind our back
    seconds.now += 29.0
    assert await tokens.authenticate(issued.token) is not None  # still remembered
    seconds.now += 1.0
    assert await tokens.authenticate(issued.token) is None


async def test_an_unreadable_cache_means_the_database_is_asked_every_time(
    held: Held, database: Database, cache: FailingCache, name: str
) -> None:
    tokens, issued = held.tokens, held.issued
    cache.down = True
    with statements_of(database) as sent:
        assert await tokens.authenticate(issued.token) is not None
    assert len(queries(sent)) == 1
    await UserRepository(database).set_disabled(name, True)
    assert await tokens.authenticate(issued.token) is None


async def test_security_changes_go_ahead_while_the_cache_is_unreachable(
    users: UserService,
    accounts: AccountRepository,
    database: Database,
    cache: FailingCache,
    seconds: Seconds,
    clock: ManualClock,
    name: str,
) -> None:
    """A revoke or a disable is never refused for want of the cache (every process that
    cannot read it asks the database), and a failed registration still leaves nothing."""
    await users.register(name, PASSWORD)
    tokens = process(database, cache, seconds)
    revoked, kept = await tokens.issue(name, "revoked"), await tokens.issue(name, "kept")
    repository = UserRepository(database, clock, version=CredentialsVersion(cache))
    cache.down = True
    await tokens.revoke(name, revoked.info.token_id)
    assert await tokens.authenticate(revoked.token) is None
    await repository.set_disabled(name, True)
    assert await tokens.authenticate(kept.token) is None

    registering = UserService(repository, Passwords(CHEAP_PARAMETERS), accounts)
    taken = await accounts.create(f"ACC-{name}-taken", name, 1)
    with pytest.raises(DuplicateAccount):  # the account fails, so the user is deleted again
        await registering.register(f"{name}-b", PASSWORD, account_id=taken.account_id)
    assert await repository.get(f"{name}-b") is None


async def test_unknown_tokens_are_never_remembered(
    users: UserService, database: Database, cache: FailingCache, seconds: Seconds, name: str
) -> None:
    await users.register(name, PASSWORD)
    tokens = process(database, cache, seconds)
    for _ in range(2):
        with statements_of(database) as sent:
            assert await tokens.authenticate(f"{TOKEN_PREFIX}nobody") is None
        assert len(queries(sent)) == 1

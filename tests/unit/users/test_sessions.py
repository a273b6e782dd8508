"""Sessions in the cache: sliding expiry, a lifetime cap, ending all of a user's sessions, and
failing closed when the cache is down."""

from __future__ import annotations

import hashlib

import pytest

from tests.unit.web.world import START, Clocks, FailingCache
from tradeloom.cache.memory import MemoryCache
from tradeloom.users.model import Role, User
from tradeloom.users.sessions import SessionStore, SessionStoreUnavailable

HOUR = 3600.0
ALICE = User("alice", Role.TRADER, START)
BOB = User("bob", Role.ADMIN, START)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def cache(clocks: Clocks) -> MemoryCache:
    return MemoryCache(clock=clocks)


@pytest.fixture
def store(cache: MemoryCache, clocks: Clocks) -> SessionStore:
    return SessionStore(cache, clocks.wall, ttl=8 * HOUR, max_lifetime=24 * HOUR)


async def test_a_session_reads_back_with_its_user_role_and_csrf_token(
    store: SessionStore,
) -> None:
    session = await store.create(BOB)
    assert await store.get(session.session_id) == session
    assert session.role is Role.ADMIN
    assert session.csrf_token != session.session_id
    assert (await store.create(BOB)).session_id != session.session_id


async def test_the_cache_holds_no_usable_session_id(
    store: SessionStore, cache: MemoryCache
) -> None:
    session = await store.create(ALICE)
    assert await cache.get(f"auth:session:{session.session_id}") is None
    digest = hashlib.sha256(session.session_id.encode()).hexdigest()
    assert await cache.get(f"auth:session:{digest}") is not None


@pytest.mark.parametrize("session_id", ["", "alice", "alice.", ".secret", "x" * 500, "Al!ce.s"])
async def test_an_unknown_or_malformed_id_is_no_session(
    store: SessionStore, session_id: str
) -> None:
    await store.create(ALICE)
    assert await store.get(session_id) is None


async def test_a_forged_id_naming_another_user_is_no_session(store: SessionStore) -> None:
    session = await store.create(ALICE)
    secret = session.session_id.rpartition(".")[2]
    assert await store.get(f"bob.{secret}") is None


async def test_an_idle_session_expires_after_the_ttl(store: SessionStore, clocks: Clocks) -> None:
    session = await store.create(ALICE)
    clocks.advance(8 * HOUR)
    assert await store.get(session.session_id) is None


async def test_a_session_in_use_slides_past_the_ttl(store: SessionStore, clocks: Clocks) -> None:
    session = await store.create(ALICE)
    for _ in range(3):
        clocks.advance(6 * HOUR)
        assert await store.get(session.session_id) == session
    clocks.advance(8 * HOUR)
    assert await store.get(session.session_id) is None


async def test_no_session_outlives_its_maximum_lifetime(
    store: SessionStore, clocks: Clocks
) -> None:
    session = await store.create(ALICE)
    for _ in range(5):
        clocks.advance(4 * HOUR)
        assert await store.get(session.session_id) is not None
    clocks.advance(4 * HOUR)
    assert await store.get(session.session_id) is None


async def test_deleting_ends_one_session(store: SessionStore) -> None:
    first, second = await store.create(ALICE), await store.create(ALICE)
    await store.delete(first.session_id)
    assert await store.get(first.session_id) is None
    assert await store.get(second.session_id) == second


async def test_end_all_ends_every_session_of_the_user_and_no_other(store: SessionStore) -> None:
    alices = [await store.create(ALICE) for _ in range(3)]
    bobs = await store.create(BOB)
    await store.end_all("alice")
    assert [await store.get(s.session_id) for s in alices] == [None, None, None]
    assert await store.get(bobs.session_id) == bobs
    fresh = await store.create(ALICE)
    assert await store.get(fresh.session_id) == fresh


async def test_every_operation_fails_closed_when_the_cache_is_down(
    cache: MemoryCache, clocks: Clocks
) -> None:
    failing = FailingCache(cache)
    store = SessionStore(failing, clocks.wall)  # type: ignore[arg-type]
    session = await store.create(ALICE)
    failing.down = True
    with pytest.raises(SessionStoreUnavailable):
        await store.get(session.session_id)
    with pytest.raises(SessionStoreUnavailable):
        await store.create(ALICE)
    with pytest.raises(SessionStoreUnavailable):
        await store.delete(session.session_id)
    with pytest.raises(SessionStoreUnavailable):
        await store.end_all("alice")


def test_a_ttl_longer_than_the_lifetime_is_refused(cache: MemoryCache) -> None:
    with pytest.raises(ValueError, match="ttl"):
        SessionStore(cache, ttl=2 * HOUR, max_lifetime=HOUR)

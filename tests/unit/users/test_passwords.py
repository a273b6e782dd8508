"""argon2id hashing: verify never raises for bad input, an unknown user costs a check too."""

from __future__ import annotations

from tradeloom.users.passwords import CHEAP_PARAMETERS, HashParameters, Passwords


async def test_a_hash_verifies_its_password_and_no_other() -> None:
    passwords = Passwords(CHEAP_PARAMETERS)
    stored = await passwords.hash("correct horse")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert await passwords.verify(stored, "correct horse")
    assert not await passwords.verify(stored, "correct horsE")


async def test_the_same_password_hashes_differently_each_time() -> None:
    passwords = Passwords(CHEAP_PARAMETERS)
    assert await passwords.hash("pw") != await passwords.hash("pw")


async def test_an_unreadable_stored_hash_verifies_nothing() -> None:
    passwords = Passwords(CHEAP_PARAMETERS)
    assert not await passwords.verify("not a hash", "pw")
    assert passwords.needs_rehash("not a hash")


async def test_an_unknown_user_is_never_verified() -> None:
    passwords = Passwords(CHEAP_PARAMETERS)
    assert not await passwords.verify_unknown("")
    assert not await passwords.verify_unknown("anything")


async def test_a_hash_made_with_other_parameters_needs_a_rehash() -> None:
    old = await Passwords(CHEAP_PARAMETERS).hash("pw")
    stronger = Passwords(HashParameters(time_cost=2, memory_cost=16, parallelism=1))
    assert await stronger.verify(old, "pw")
    assert stronger.needs_rehash(old)
    assert not stronger.needs_rehash(await stronger.hash("pw"))

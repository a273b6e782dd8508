"""Password hashing with argon2id.

Hashing and verifying cost tens of milliseconds of CPU and ``memory_cost`` KiB of memory each,
so they run in worker threads (``asyncio.to_thread``) and never block the event loop, and at
most ``max_concurrent`` run at once, which bounds the memory a burst of logins can take.

Guarantees:

* ``verify`` answers False for a wrong password and for a stored hash it cannot read; it never
  raises for those.
* ``verify_unknown`` spends the same work as ``verify`` and answers False, so a login for a
  username that does not exist takes as long as one with a wrong password (no enumeration by
  timing).
* ``needs_rehash`` says when a stored hash was made with other parameters than the current
  ones, so a login can upgrade it.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


@dataclass(frozen=True, slots=True)
class HashParameters:
    """argon2id costs. The defaults are RFC 9106's low-memory recommendation (argon2-cffi's
    own defaults): 3 passes over 64 MiB with 4 lanes."""

    time_cost: int = 3
    memory_cost: int = 65536  # KiB
    parallelism: int = 4


# Far too weak for real passwords; for tests, where hashing time is pure waste.
CHEAP_PARAMETERS = HashParameters(time_cost=1, memory_cost=8, parallelism=1)


class Passwords:
    def __init__(
        self, parameters: HashParameters | None = None, *, max_concurrent: int = 4
    ) -> None:
        chosen = parameters or HashParameters()
        self._hasher = PasswordHasher(
            time_cost=chosen.time_cost,
            memory_cost=chosen.memory_cost,
            parallelism=chosen.parallelism,
        )
        self._slots = asyncio.Semaphore(max_concurrent)
        self._decoy: str | None = None

    async def hash(self, password: str) -> str:
        """A salted argon2id hash of ``password`` in PHC string form."""
        async with self._slots:
            # Sync seam: argon2 runs in a worker thread; the loop keeps serving meanwhile.
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str, password: str) -> bool:
        async with self._slots:
            # Sync seam: as in ``hash``.
            return await asyncio.to_thread(self._verify, stored_hash, password)

    async def verify_unknown(self, password: str) -> bool:
        """Verify against a hash no password matches; always False, at the cost of a check."""
        if self._decoy is None:
            self._decoy = await self.hash(secrets.token_urlsafe(32))
        await self.verify(self._decoy, password)
        return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

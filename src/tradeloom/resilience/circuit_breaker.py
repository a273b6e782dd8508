"""A circuit breaker: stop calling something that keeps failing, and probe it now and then.

States and moves:

* **closed**: calls go through; ``failure_threshold`` consecutive failures open it (a
  success in between resets the count);
* **open**: calls are refused at once, until ``reset_timeout`` seconds have passed on the
  injected clock since it opened;
* **half-open**: exactly one trial call is let through; its success closes the breaker, its
  failure opens it again for another ``reset_timeout``. A trial that never reports back (its
  caller was cancelled) is given up after ``reset_timeout``, and another trial is allowed.

Not thread-safe: one breaker belongs to one event loop (or one thread). Time comes only from
the injected clock, so tests move it by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from types import TracebackType

import structlog

from tradeloom.domain.errors import DomainError
from tradeloom.domain.time import Clock

log = structlog.get_logger("tradeloom.resilience.circuit_breaker")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(DomainError):
    """A call was refused because the breaker is open (or its one trial is under way)."""

    code = "circuit_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        *,
        clock: Clock,
        name: str = "circuit",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_timeout <= 0:
            raise ValueError(f"reset_timeout must be positive, got {reset_timeout}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = timedelta(seconds=reset_timeout)
        self.name = name
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at: datetime | None = None
        self._trial_started_at: datetime | None = None

    @property
    def state(self) -> CircuitState:
        """The state as of now: an open breaker whose cool-down has passed reads half-open."""
        if self._state is CircuitState.OPEN and self._cooled_down():
            return CircuitState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go out now? In half-open, True is returned once: the caller is the trial
        and must report back with ``record_success`` or ``record_failure``."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        if self._trial_started_at is not None and not self._trial_abandoned():
            return False
        self._move(CircuitState.HALF_OPEN)
        self._trial_started_at = self._clock.now()
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._trial_started_at = None
        if self._state is not CircuitState.CLOSED:
            self._move(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_started_at = None
        reopen = self._state is CircuitState.HALF_OPEN
        if reopen or (
            self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock.now()
            self._move(CircuitState.OPEN)

    async def __aenter__(self) -> CircuitBreaker:
        """``async with breaker:`` refuses with :class:`CircuitOpen`, and records the block's
        outcome: an exception is a failure, a normal exit a success."""
        if not self.allow():
            raise CircuitOpen(f"circuit {self.name} is {self.state}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.record_success()
        elif issubclass(exc_type, Exception):
            self.record_failure()

    def _cooled_down(self) -> bool:
        return self._opened_at is not None and self._clock.now() >= (
            self._opened_at + self.reset_timeout
        )

    def _trial_abandoned(self) -> bool:
        started = self._trial_started_at
        return started is not None and self._clock.now() >= started + self.reset_timeout

    def _move(self, target: CircuitState) -> None:
        if target is not self._state:
            log.info("circuit.state_changed", circuit=self.name, state=str(target))
        self._state = target

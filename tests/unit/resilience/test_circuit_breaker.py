"""The circuit breaker: closed → open → half-open → closed or open again, on a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeloom.domain.time import ManualClock
from tradeloom.resilience.circuit_breaker import CircuitBreaker, CircuitOpen, CircuitState

START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


def state_of(circuit: CircuitBreaker) -> CircuitState:
    """Read through a call so the type checker does not narrow one reading into the next."""
    return circuit.state


def breaker(threshold: int = 3, reset: float = 10.0) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock(START)
    return CircuitBreaker(threshold, reset, clock=clock, name="broker"), clock


def test_consecutive_failures_open_it_and_calls_are_refused() -> None:
    circuit, _ = breaker(threshold=3)
    for _ in range(2):
        assert circuit.allow()
        circuit.record_failure()
    assert state_of(circuit) is CircuitState.CLOSED
    circuit.record_failure()
    assert state_of(circuit) is CircuitState.OPEN
    assert not circuit.allow()


def test_a_success_resets_the_count() -> None:
    circuit, _ = breaker(threshold=2)
    circuit.record_failure()
    circuit.record_success()
    circuit.record_failure()
    assert state_of(circuit) is CircuitState.CLOSED


def test_after_the_cool_down_one_trial_goes_through_and_its_success_closes_it() -> None:
    circuit, clock = breaker(threshold=1, reset=10.0)
    circuit.record_failure()
    clock.advance(timedelta(seconds=9.9))
    assert not circuit.allow()
    clock.advance(timedelta(seconds=0.1))
    assert state_of(circuit) is CircuitState.HALF_OPEN
    assert circuit.allow(), "the trial"
    assert not circuit.allow(), "only one trial at a time"
    circuit.record_success()
    assert state_of(circuit) is CircuitState.CLOSED
    assert circuit.allow()


def test_a_failed_trial_opens_it_for_another_cool_down() -> None:
    circuit, clock = breaker(threshold=1, reset=10.0)
    circuit.record_failure()
    clock.advance(timedelta(seconds=10))
    assert circuit.allow()
    circuit.record_failure()
    assert state_of(circuit) is CircuitState.OPEN
    clock.advance(timedelta(seconds=9))
    assert not circuit.allow()
    clock.advance(timedelta(seconds=1))
    assert circuit.allow()


def test_an_abandoned_trial_is_given_up_after_the_cool_down() -> None:
    circuit, clock = breaker(threshold=1, reset=10.0)
    circuit.record_failure()
    clock.advance(timedelta(seconds=10))
    assert circuit.allow()  # this trial never reports back
    clock.advance(timedelta(seconds=10))
    assert circuit.allow()


async def test_the_context_manager_records_outcomes_and_refuses_when_open() -> None:
    circuit, _ = breaker(threshold=1)
    async with circuit:
        pass
    with pytest.raises(ConnectionError):
        async with circuit:
            raise ConnectionError("down")
    assert state_of(circuit) is CircuitState.OPEN
    with pytest.raises(CircuitOpen):
        async with circuit:
            pytest.fail("an open circuit must not run the block")


def test_bad_settings_are_refused() -> None:
    clock = ManualClock(START)
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(0, 1.0, clock=clock)
    with pytest.raises(ValueError, match="reset_timeout"):
        CircuitBreaker(1, 0.0, clock=clock)


@given(
    threshold=st.integers(min_value=1, max_value=5),
    outcomes=st.lists(st.sampled_from(["ok", "fail", "wait"]), max_size=60),
)
def test_it_behaves_like_a_reference_model(threshold: int, outcomes: list[str]) -> None:
    """Against a plain model: open exactly after ``threshold`` consecutive failures (or one
    failed trial), refuse while cooling down, one trial after it."""
    circuit, clock = breaker(threshold=threshold, reset=10.0)
    failures, opened_at, trial = 0, None, False
    for outcome in outcomes:
        if outcome == "wait":
            clock.advance(timedelta(seconds=5))
            continue
        cooled = opened_at is not None and clock.now() >= opened_at + timedelta(seconds=10)
        expected = opened_at is None or (cooled and not trial)
        assert circuit.allow() is expected
        if not expected:
            continue
        trial = opened_at is not None
        if outcome == "ok":
            circuit.record_success()
            failures, opened_at, trial = 0, None, False
        else:
            circuit.record_failure()
            failures += 1
            if trial or failures >= threshold:
                opened_at, trial = clock.now(), False
        state = CircuitState.CLOSED if opened_at is None else CircuitState.OPEN
        assert state_of(circuit) is state

"""Exact numbers: floats and non-finite values never become amounts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeloom.domain.errors import InvalidNumber
from tradeloom.domain.numbers import Money, exact, exact_or_none, is_multiple_of


@pytest.mark.parametrize("bad", [0.1, True, "NaN", "Infinity", "-inf", "abc", "", Decimal("NaN")])
def test_inexact_or_non_finite_values_are_refused_naming_the_field(bad: object) -> None:
    with pytest.raises(InvalidNumber, match=r"^qty: "):
        exact(bad, field="qty")  # type: ignore[arg-type]


def test_text_and_integers_become_exact_decimals() -> None:
    assert exact("0.1") + exact("0.2") == Decimal("0.3")
    assert exact(7) == Decimal(7)


@given(st.integers(1, 10**6), st.sampled_from(["0.01", "0.05", "1", "100"]))
def test_multiples_of_an_increment_lie_on_its_grid(n: int, increment: str) -> None:
    step = Decimal(increment)
    assert is_multiple_of(step * n, step)
    assert not is_multiple_of(step * n + step / 2, step)


def test_money_adds_within_a_currency_and_refuses_to_mix() -> None:
    assert Money(Decimal("10.10")) + Money(Decimal("0.05")) == Money(Decimal("10.15"))
    with pytest.raises(InvalidNumber, match="USD with EUR"):
        Money(Decimal(1), "USD") + Money(Decimal(1), "EUR")


def test_money_refuses_a_float_amount() -> None:
    with pytest.raises(InvalidNumber):
        Money(0.5)  # type: ignore[arg-type]


def test_an_optional_amount_stays_none_or_passes_the_same_gate() -> None:
    assert exact_or_none(None, field="limit_price") is None
    assert exact_or_none("1.5", field="limit_price") == Decimal("1.5")
    with pytest.raises(InvalidNumber, match=r"^limit_price: float"):
        exact_or_none(1.5, field="limit_price")  # type: ignore[arg-type]

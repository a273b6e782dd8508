"""Commands carry exact amounts: a float is refused where the command is made."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tradeloom.domain.commands import AmendOrder, CancelOrder, PlaceOrder
from tradeloom.domain.errors import InvalidNumber
from tradeloom.domain.orders import OrderType, Side, TimeInForce


def place(**changes: object) -> PlaceOrder:
    fields: dict[str, object] = {
        "account_id": "acc-1",
        "client_order_id": "c-1",
        "symbol": "AAPL",
        "side": Side.BUY,
        "order_type": OrderType.STOP_LIMIT,
        "quantity": Decimal("10"),
        "time_in_force": TimeInForce.DAY,
        "correlation_id": "corr-1",
        "limit_price": Decimal("187.25"),
        "stop_price": Decimal("190"),
    }
    fields.update(changes)
    return PlaceOrder(**fields)  # type: ignore[arg-type]


def amend(**changes: object) -> AmendOrder:
    return AmendOrder(account_id="acc-1", order_id="o-1", correlation_id="corr-1", **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["quantity", "limit_price", "stop_price"])
@pytest.mark.parametrize("make", [place, amend], ids=["PlaceOrder", "AmendOrder"])
def test_a_float_amount_is_refused_naming_the_field(make: object, name: str) -> None:
    with pytest.raises(InvalidNumber, match=rf"^{name}: float is not an exact number"):
        make(**{name: 1.5})  # type: ignore[operator]


@pytest.mark.parametrize("bad", [True, "NaN", "Infinity", "1,5"])
def test_a_non_finite_or_non_numeric_quantity_is_refused(bad: object) -> None:
    with pytest.raises(InvalidNumber, match=r"^quantity: "):
        place(quantity=bad)


def test_integers_and_decimal_text_become_exact_decimals() -> None:
    command = place(quantity=3, limit_price="187.25", stop_price=190)
    assert (command.quantity, command.limit_price, command.stop_price) == (
        Decimal(3),
        Decimal("187.25"),
        Decimal(190),
    )
    assert {type(command.quantity), type(command.limit_price), type(command.stop_price)} == {
        Decimal
    }
    assert type(amend(quantity="4").quantity) is Decimal


def test_terms_left_out_of_an_amend_stay_none() -> None:
    command = amend(limit_price=Decimal("186"))
    assert (command.quantity, command.limit_price, command.stop_price) == (
        None,
        Decimal("186"),
        None,
    )


def test_a_market_order_has_no_prices() -> None:
    command = place(order_type=OrderType.MARKET, limit_price=None, stop_price=None)
    assert (command.limit_price, command.stop_price) == (None, None)


def test_commands_are_immutable() -> None:
    command = CancelOrder(account_id="acc-1", order_id="o-1", correlation_id="corr-1")
    with pytest.raises(AttributeError):
        command.order_id = "o-2"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        place().quantity = Decimal(1)  # type: ignore[misc]

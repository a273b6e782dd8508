"""One serialization for the bus and the archive, exact for every event."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeloom.domain import events
from tradeloom.domain.errors import InvalidNumber, NaiveTimestamp
from tradeloom.domain.events import Event, decode_event, encode_event, new_event
from tradeloom.domain.ids import new_id

PAYLOAD_TYPES: tuple[type[events.Payload], ...] = typing.get_args(events.AnyPayload)

exact_decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: abs(d.adjusted()) < 40
)
# What a payload takes as an amount: a Decimal, or an int or decimal text it makes one.
amounts = exact_decimals | st.integers(-(10**30), 10**30) | exact_decimals.map(str)
utc_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by design
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, ZoneInfo("UTC")]),
)


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return strategy_for(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(arg) for arg in typing.get_args(annotation)))
    if origin is tuple:  # tuple[X, ...]
        item = typing.get_args(annotation)[0]
        return st.lists(strategy_for(item), max_size=3).map(tuple)
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return struct_strategy(annotation)
    if annotation is type(None):
        return st.none()
    if annotation is Decimal:
        return amounts
    if annotation is datetime:
        return utc_datetimes
    if annotation is bytes:
        return st.binary(max_size=64)
    if annotation is int:
        return st.integers(-(2**53), 2**53)
    if annotation is str:
        return st.text(max_size=20)
    if isinstance(annotation, type) and issubclass(annotation, str):  # StrEnum
        return st.sampled_from(list(annotation))
    raise NotImplementedError(f"no strategy for {annotation!r}")


def struct_strategy(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: strategy_for(hints[f.name]) for f in msgspec.structs.fields(cls)}
    return st.builds(cls, **fields)


def payloads() -> st.SearchStrategy[events.Payload]:
    return st.one_of(*(struct_strategy(cls) for cls in PAYLOAD_TYPES))


events_strategy = st.builds(
    Event,
    id=st.just(new_id()),
    occurred_at=utc_datetimes,
    correlation_id=st.text(max_size=20),
    causation_id=st.none() | st.text(max_size=20),
    account_id=st.none() | st.text(max_size=20),
    payload=payloads(),
)


@given(events_strategy)
def test_every_event_round_trips_exactly(event: Event) -> None:
    """Every payload type, every optional field set or not, amounts given as Decimal, int or
    text: decoding gives back an equal event, holding only Decimals as amounts, that
    encodes to the same bytes."""
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert decoded.type == event.type
    assert encode_event(decoded) == encode_event(event)
    for payload in (event.payload, *getattr(event.payload, "updates", ())):
        for name in amount_fields(type(payload)):
            value = getattr(payload, name)
            assert value is None or type(value) is Decimal, (type(payload).__name__, name)


def fields_of(cls: type[Any], *annotations: Any) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in msgspec.structs.fields(cls) if hints[f.name] in annotations]


def amount_fields(cls: type[Any]) -> list[str]:
    return fields_of(cls, Decimal, Decimal | None)


AMOUNT_FIELDS = [(cls, name) for cls in PAYLOAD_TYPES for name in amount_fields(cls)]
TIMESTAMP_FIELDS = [(cls, name) for cls in PAYLOAD_TYPES for name in fields_of(cls, datetime)]
NOT_AMOUNTS = (
    st.floats()
    | st.booleans()
    | st.sampled_from([Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity"), "1,5", b"1"])
)


def with_field(payload: events.Payload, name: str, value: object) -> events.Payload:
    """A payload of the same type with ``name`` set to ``value``, built by its constructor."""
    fields = {f: getattr(payload, f) for f in payload.__struct_fields__}
    return type(payload)(**{**fields, name: value})


def ids(pairs: list[tuple[type[Any], str]]) -> list[str]:
    return [f"{cls.__name__}.{name}" for cls, name in pairs]


def test_the_field_lists_find_amounts_and_timestamps() -> None:
    assert (events.PriceUpdate, "bid") in AMOUNT_FIELDS
    assert (events.OrderFilled, "fee") in AMOUNT_FIELDS
    assert (events.OrderFilled, "filled_at") in TIMESTAMP_FIELDS
    assert (events.CandleClosed, "start") in TIMESTAMP_FIELDS


@pytest.mark.parametrize(("cls", "name"), AMOUNT_FIELDS, ids=ids(AMOUNT_FIELDS))
@settings(max_examples=10)
@given(data=st.data())
def test_an_inexact_amount_in_any_payload_is_refused_naming_the_field(
    cls: type[events.Payload], name: str, data: st.DataObject
) -> None:
    payload = data.draw(struct_strategy(cls))
    required = typing.get_type_hints(cls)[name] is Decimal
    bad = data.draw(NOT_AMOUNTS | (st.none() if required else st.nothing()))
    with pytest.raises(InvalidNumber, match=rf"^{name}: "):
        with_field(payload, name, bad)


@pytest.mark.parametrize(("cls", "name"), TIMESTAMP_FIELDS, ids=ids(TIMESTAMP_FIELDS))
@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 1, 1, 10),  # noqa: DTZ001 - the naive time under test
        datetime(2026, 1, 1, 10, tzinfo=timezone(timedelta(hours=1))),
        datetime(2026, 1, 1, 10, tzinfo=ZoneInfo("America/New_York")),
    ],
    ids=["naive", "+01:00", "New_York"],
)
@settings(max_examples=3)
@given(data=st.data())
def test_a_timestamp_not_in_utc_in_any_payload_is_refused_naming_the_field(
    cls: type[events.Payload], name: str, moment: datetime, data: st.DataObject
) -> None:
    payload = data.draw(struct_strategy(cls))
    with pytest.raises(NaiveTimestamp, match=rf"^{name}: "):
        with_field(payload, name, moment)


@pytest.mark.parametrize(("cls", "name"), TIMESTAMP_FIELDS, ids=ids(TIMESTAMP_FIELDS))
@settings(max_examples=3)
@given(data=st.data())
def test_a_timestamp_that_is_not_a_datetime_is_refused(
    cls: type[events.Payload], name: str, data: st.DataObject
) -> None:
    payload = data.draw(struct_strategy(cls))
    with pytest.raises(TypeError, match=rf"^{name}: str is not a datetime"):
        with_field(payload, name, "2026-01-01T10:00:00Z")


def test_a_float_quantity_never_reaches_an_order_submitted() -> None:
    with pytest.raises(InvalidNumber, match=r"^quantity: float is not an exact number"):
        events.OrderSubmitted(
            order_id="o",
            client_order_id="c",
            symbol="AAPL",
            side=events.Side.BUY,
            order_type=events.OrderType.MARKET,
            quantity=1.1,  # type: ignore[arg-type]
            time_in_force=events.TimeInForce.DAY,
        )


def fill_event_text() -> str:
    fill = events.OrderFilled(
        order_id="o",
        fill_id="f",
        symbol="AAPL",
        side=events.Side.BUY,
        quantity=Decimal("2"),
        price=Decimal("187.25"),
        filled_at=datetime(2026, 1, 1, 10, tzinfo=UTC),
        cumulative_quantity=Decimal("2"),
        leaves_quantity=Decimal("0"),
    )
    return encode_event(new_event(fill, occurred_at=datetime.now(UTC), correlation_id="c")).decode()


def test_decoding_a_payload_timestamp_in_another_zone_fails_validation() -> None:
    text = fill_event_text().replace("2026-01-01T10:00:00Z", "2026-01-01T11:00:00+01:00")
    with pytest.raises(msgspec.ValidationError, match=r"filled_at: .* is not UTC"):
        decode_event(text.encode())


@pytest.mark.parametrize("bad", ['"NaN"', '"-Infinity"', '"sNaN"'])
def test_decoding_a_non_finite_amount_fails_validation(bad: str) -> None:
    text = fill_event_text().replace('"187.25"', bad)
    with pytest.raises(msgspec.ValidationError, match=r"price: .* is not finite"):
        decode_event(text.encode())


def test_every_payload_type_has_a_distinct_event_type() -> None:
    tags = [cls.__struct_config__.tag for cls in PAYLOAD_TYPES]
    assert len(tags) == len(set(tags))
    assert all(isinstance(tag, str) for tag in tags)


@pytest.mark.parametrize(
    ("tag", "kind"),
    [
        ("order.cancel_rejected", events.OrderCancelRejected),
        ("order.replace_rejected", events.OrderReplaceRejected),
    ],
)
def test_a_refused_cancel_and_a_refused_amend_decode_to_their_own_types(
    tag: str, kind: type[events.Payload]
) -> None:
    """Events stored as ``order.cancel_rejected`` (refused amends among them, before
    ``order.replace_rejected`` existed) still decode as they were written."""
    stored = (
        '{"id":"0192d0c2-0000-7000-8000-000000000001","occurred_at":"2026-11-25T14:30:00Z",'
        '"correlation_id":"c","causation_id":null,"account_id":"A1",'
        f'"payload":{{"type":"{tag}","order_id":"o1","reason":"too late"}}}}'
    )
    event = decode_event(stored.encode())
    assert event.payload == kind(order_id="o1", reason="too late")
    assert event.type == tag
    assert encode_event(event) == stored.encode()


def test_decimals_travel_as_text_so_nothing_is_rounded() -> None:
    payload = events.OrderReplaced(order_id="o", quantity=Decimal("0.1000000000000000055511"))
    event = new_event(payload, occurred_at=datetime.now(UTC), correlation_id="c")
    assert b'"0.1000000000000000055511"' in encode_event(event)
    assert decode_event(encode_event(event)).payload == payload


def test_an_event_with_a_naive_or_non_utc_time_is_refused() -> None:
    payload = events.OrderExpired(order_id="o")
    with pytest.raises(NaiveTimestamp):
        new_event(payload, occurred_at=datetime(2026, 1, 1), correlation_id="c")  # noqa: DTZ001
    with pytest.raises(NaiveTimestamp):
        new_event(
            payload,
            occurred_at=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5))),
            correlation_id="c",
        )


def test_junk_bytes_raise_a_validation_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_event(b'{"id": 1}')
    with pytest.raises(msgspec.DecodeError):
        decode_event(b"not json")


def test_an_unknown_event_type_is_refused() -> None:
    event = new_event(
        events.OrderExpired(order_id="o"), occurred_at=datetime.now(UTC), correlation_id="c"
    )
    tampered = encode_event(event).replace(b"order.expired", b"order.exploded")
    with pytest.raises(msgspec.ValidationError, match=r"order\.exploded"):
        decode_event(tampered)


def test_event_ids_sort_in_creation_order() -> None:
    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_decoding_an_event_stamped_in_another_zone_fails_validation() -> None:
    event = new_event(
        events.OrderExpired(order_id="o"), occurred_at=datetime.now(UTC), correlation_id="c"
    )
    text = encode_event(event).decode()
    stamp = event.occurred_at.isoformat().replace("+00:00", "Z")
    shifted = text.replace(stamp, "2026-01-01T10:00:00+01:00")
    with pytest.raises(msgspec.ValidationError, match="not UTC"):
        decode_event(shifted.encode())

"""One serialization for the bus and the archive, exact for every event."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeloom.domain import events
from tradeloom.domain.errors import NaiveTimestamp
from tradeloom.domain.events import Event, decode_event, encode_event, new_event
from tradeloom.domain.ids import new_id

PAYLOAD_TYPES: tuple[type[events.Payload], ...] = typing.get_args(events.AnyPayload)

exact_decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: abs(d.adjusted()) < 40
)
utc_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by design
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
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
        return exact_decimals
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
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert decoded.type == event.type
    assert encode_event(decoded) == encode_event(event)


def test_every_payload_type_has_a_distinct_event_type() -> None:
    tags = [cls.__struct_config__.tag for cls in PAYLOAD_TYPES]
    assert len(tags) == len(set(tags))
    assert all(isinstance(tag, str) for tag in tags)


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

"""Exact JSON for API answers: Decimals go out as strings, times as ISO 8601 UTC.

A JSON number would reach most clients as a binary float (``0.1 + 0.2``); amounts are strings
so nothing is lost between our Decimal and the client's own decimal type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with every Decimal as its string, datetime as ISO 8601, enum as its value."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [jsonable(item) for item in value]
    return value


def json_object(value: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`jsonable` of a mapping, typed as the JSON object it is."""
    return {str(key): jsonable(item) for key, item in value.items()}

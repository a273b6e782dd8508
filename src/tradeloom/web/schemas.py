"""What every request body model of the API shares (pydantic lives at this edge only).

* :class:`ApiModel` refuses unknown fields, so a misspelt field is a 422 naming it instead of
  a silently ignored option.
* :data:`ExactDecimal` takes amounts as JSON strings (``"100.25"``) or integers and refuses
  JSON floats, which would have lost exactness before we saw them; it is written back as a
  string.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema

from tradeloom.domain.errors import InvalidNumber
from tradeloom.domain.numbers import exact


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exact(value: Any) -> Decimal:
    if isinstance(value, float):
        raise ValueError(f'send exact numbers as strings, e.g. "{value}"')
    if not isinstance(value, Decimal | int | str) or isinstance(value, bool):
        raise ValueError("expected a decimal number as a string")
    try:
        return exact(value)
    except InvalidNumber:
        raise ValueError(f"{value!r} is not a finite decimal number") from None


ExactDecimal = Annotated[
    Decimal,
    BeforeValidator(_exact),
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "string", "examples": ["100.25"]}, {"type": "integer"}]}),
]

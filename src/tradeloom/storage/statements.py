"""Statements built once, at import, for each dialect, where their text differs by dialect.

Building a SQLAlchemy statement and deriving its cache key costs ~0.1-0.6 ms on this machine,
more than PostgreSQL's part of a small query; a statement built once keeps its cache key, so
running it again costs next to nothing before the driver. The hot paths therefore build
their statements at import with bound parameters and pass the values to ``execute``.

A statement that takes a list of keys differs by dialect: PostgreSQL takes the list as one
array (``column = ANY(:name)``, one statement text whatever the list's length: an ``IN``
list would be a new text, prepared anew, per count), SQLite, which has no arrays, as an
expanding ``IN`` (the list spliced in at each execution). :class:`ByDialect` builds both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, String, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

S = TypeVar("S")

Among = Callable[[ColumnElement[Any], str], ColumnElement[bool]]
"""``among(column, name)``: the condition "``column`` is one of the list bound as ``name``"."""


def _any_of(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    # Strings travel as varchar[], never varchar(n)[]: that cast would cut a longer value to n
    # characters, and the cut value could match a stored key.
    element = String() if isinstance(column.type, String) else column.type
    return column == any_(bindparam(name, type_=ARRAY(element)))


def _in_list(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    return column.in_(bindparam(name, expanding=True))


class ByDialect(Generic[S]):
    """One statement built twice, for PostgreSQL and for SQLite, by one ``build(among)``.
    ``statement(conn)`` is the one for ``conn``'s dialect; run it with each list of keys as
    a list (not a set: the driver sends a sequence) under the name it was built with."""

    __slots__ = ("postgresql", "sqlite")

    def __init__(self, build: Callable[[Among], S]) -> None:
        self.postgresql = build(_any_of)
        self.sqlite = build(_in_list)

    def __call__(self, conn: AsyncConnection) -> S:
        return self.postgresql if conn.dialect.name == "postgresql" else self.sqlite

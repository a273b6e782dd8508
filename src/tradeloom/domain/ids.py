"""Identifiers. Event and order ids are UUIDv7: their text sorts in creation-time order."""

from __future__ import annotations

from uuid_utils.compat import uuid7


def new_id() -> str:
    """A fresh UUIDv7 in canonical text form; later ids compare greater as strings."""
    return str(uuid7())

"""The OMS query side: a user's orders, read from the order read model (never the stream).

Every query is scoped to a user: it reaches orders only through the accounts that user owns,
so another user's order is simply not found (invariant 9), whatever id is asked for.

Paging is by keyset, newest first on ``(submitted_at, order_id)``, a total order. A cursor
names the last row of a page; the next page starts strictly after it. So rows inserted while
a user pages (newer orders, at the front) never make a page repeat a row or skip one that
was there when paging began. Cursors are opaque strings; a malformed one, like any bad
argument, raises :class:`InvalidQuery` with a machine-readable ``code`` and the ``field``.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from sqlalchemy import Select, select, tuple_

from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import decode_event
from tradeloom.domain.order_view import OrderView, fold_order
from tradeloom.oms.order_view import view_from_row
from tradeloom.storage.database import Database
from tradeloom.storage.schema import accounts, order_history, order_views

StatusFilter = Literal["open", "closed", "all"]
MAX_PAGE = 500


class InvalidQuery(DomainError, ValueError):
    """A query argument that cannot be used; ``field`` names it, ``code`` says how."""

    code = "invalid_query"

    def __init__(self, message: str, *, code: str, field: str) -> None:
        super().__init__(message, code=code)
        self.field = field


@dataclass(frozen=True, slots=True)
class OrderPage:
    """One page of orders, newest first; ``next_cursor`` is None on the last page."""

    items: tuple[OrderView, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class OrderHistoryEntry:
    """One recorded event of an order, in the order the read model folds them.

    ``payload`` holds the event's fields (exact Decimals, UTC datetimes); ``applied`` says
    whether the order's state machine took it, and ``note`` why not."""

    event_id: str
    event_type: str
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None
    payload: Mapping[str, Any]
    applied: bool
    note: str | None


class OrderQueries:
    """Reads of the order read model; each opens one read connection and never locks."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, owner: str, order_id: str) -> OrderView | None:
        """The order, or None when it does not exist or is not ``owner``'s."""
        query = _owned(owner).where(order_views.c.order_id == order_id)
        async with self._database.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else view_from_row(row._mapping)

    async def list(
        self,
        owner: str,
        *,
        account_id: str | None = None,
        status: StatusFilter = "all",
        symbol: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> OrderPage:
        """``owner``'s orders submitted in ``[since, until)``, newest first, ``limit`` a page,
        starting after the cursor ``after`` (a ``next_cursor`` of an earlier page)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidQuery(
                f"limit must be 1..{MAX_PAGE}, got {limit}", code="invalid_limit", field="limit"
            )
        query = _owned(owner)
        if account_id is not None:
            query = query.where(order_views.c.account_id == account_id)
        if symbol is not None:
            query = query.where(order_views.c.symbol == symbol)
        query = _by_status(query, status)
        query = _in_window(query, since, until)
        if after is not None:
            submitted_at, order_id = decode_cursor(after)
            key = tuple_(order_views.c.submitted_at, order_views.c.order_id)
            query = query.where(key < tuple_(submitted_at, order_id))
        query = query.order_by(
            order_views.c.submitted_at.desc(), order_views.c.order_id.desc()
        ).limit(limit + 1)
        async with self._database.connect() as conn:
            views = [view_from_row(row._mapping) for row in await conn.execute(query)]
        page, more = views[:limit], len(views) > limit
        last = page[-1] if page else None
        cursor = encode_cursor(last.submitted_at, last.order_id) if more and last else None
        return OrderPage(tuple(page), cursor)

    async def history(self, owner: str, order_id: str) -> builtins.list[OrderHistoryEntry]:
        """The order's recorded events in fold order; empty when it is not ``owner``'s."""
        query = (
            select(order_history.c.event)
            .join(accounts, accounts.c.account_id == order_history.c.account_id)
            .where(order_history.c.order_id == order_id, accounts.c.owner == owner)
        )
        async with self._database.connect() as conn:
            events = [decode_event(data) for data in (await conn.execute(query)).scalars()]
        fold = fold_order(events)
        return [
            OrderHistoryEntry(
                event_id=event.id,
                event_type=event.type,
                occurred_at=event.occurred_at,
                correlation_id=event.correlation_id,
                causation_id=event.causation_id,
                payload=msgspec.structs.asdict(event.payload),
                applied=outcome.applied,
                note=outcome.note,
            )
            for event, outcome in zip(fold.events, fold.outcomes, strict=True)
        ]


def _owned(owner: str) -> Select[Any]:
    """Order views of accounts ``owner`` owns: the one gate of every query here."""
    return (
        select(order_views)
        .join(accounts, accounts.c.account_id == order_views.c.account_id)
        .where(accounts.c.owner == owner)
    )


def _by_status(query: Select[Any], status: str) -> Select[Any]:
    if status == "open":
        return query.where(order_views.c.is_open.is_(True))
    if status == "closed":
        return query.where(order_views.c.is_open.is_(False))
    if status == "all":
        return query
    raise InvalidQuery(
        f"status must be open, closed or all, got {status!r}", code="invalid_status", field="status"
    )


def _in_window(query: Select[Any], since: datetime | None, until: datetime | None) -> Select[Any]:
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.utcoffset() is None:
            raise InvalidQuery(f"{name} needs a time zone", code="invalid_time", field=name)
    if since is not None and until is not None and since >= until:
        raise InvalidQuery("since must be before until", code="invalid_time", field="since")
    for name, moment in (("since", since), ("until", until)):
        if moment is None:
            continue
        try:
            utc = moment.astimezone(UTC)
        except OverflowError:
            raise InvalidQuery(f"{name} is out of range", code="invalid_time", field=name) from None
        column = order_views.c.submitted_at
        query = query.where(column >= utc if name == "since" else column < utc)
    return query


def encode_cursor(submitted_at: datetime, order_id: str) -> str:
    """An opaque cursor naming the row ``(submitted_at, order_id)``."""
    raw = json.dumps([submitted_at.isoformat(), order_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The row a cursor names; raises :class:`InvalidQuery` (``invalid_cursor``) otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, order_id = json.loads(raw)
        submitted_at = datetime.fromisoformat(moment)
        if submitted_at.utcoffset() is None or not isinstance(order_id, str) or not order_id:
            raise ValueError("not a cursor")
        return submitted_at.astimezone(UTC), order_id
    except (binascii.Error, ValueError, TypeError, OverflowError) as exc:
        raise InvalidQuery(
            "the cursor is not one this service handed out", code="invalid_cursor", field="after"
        ) from exc

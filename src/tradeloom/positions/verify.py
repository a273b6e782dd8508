"""Checks the positions projection against an independent record: the order events.

Every position and every account's cash is recomputed from the fill events the order
projection kept in ``order_history`` (not from ``position_fills``, which the positions
projection wrote itself), with the domain's :class:`~tradeloom.domain.positions.PositionBook`
(canonical order, once per fill id), and compared with the stored ``positions`` rows and
``accounts.cash`` (which must be ``opening_cash`` plus the fills' cash deltas).

The history is read account by account (ordered by account and event id, a page at a time),
so memory holds one account's fills at once. All reads run in one transaction, a consistent
snapshot on both dialects; still, the two projections consume independently, so run this
when both have caught up (a fill one has applied and the other not yet shows as a
difference, and disappears on the next run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.events import Event, decode_event
from tradeloom.domain.positions import ConflictingFill, PositionBook, exact_sum, fill_from_event
from tradeloom.positions.repository import PositionRow, load_positions, position_values
from tradeloom.storage.database import Database
from tradeloom.storage.schema import accounts, order_history, positions

FILL_EVENT_TYPES = ("order.filled", "order.partially_filled")
_FIELDS = (
    "quantity",
    "cost_basis",
    "realized_pnl",
    "fees",
    "fill_count",
    "last_filled_at",
    "last_fill_id",
)

Progress = Callable[[int, int], None]
"""Called with (fill events read so far, fill events in all) after each page."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One stored value that is not what the order events say. ``symbol`` is None for an
    account's cash (and for a fill event that could not be read)."""

    account_id: str
    symbol: str | None
    field: str
    stored: str
    recomputed: str


@dataclass
class VerifyReport:
    fill_events: int = 0
    accounts: int = 0
    positions: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.differences


async def verify_positions(
    database: Database,
    *,
    accounts: Collection[str] | None = None,
    page_size: int = 1000,
    progress: Progress | None = None,
) -> VerifyReport:
    """Recompute every position and account's cash (of ``accounts`` only, when given) from the
    order events and compare them with what is stored."""
    report = VerifyReport()
    scope = _fill_events() if accounts is None else _fill_events(sorted(accounts))
    async with database.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        total = int(await conn.scalar(select(func.count()).select_from(scope.subquery())) or 0)
        unchecked = await _account_ids(conn) if accounts is None else set(accounts)
        async for account_id, events in _fill_events_by_account(conn, scope, page_size):
            report.fill_events += len(events)
            await _check_account(conn, account_id, events, report)
            unchecked.discard(account_id)
            if progress is not None:
                progress(report.fill_events, total)
        for account_id in sorted(unchecked):
            await _check_account(conn, account_id, [], report)
    return report


def _fill_events(accounts: Sequence[str] | None = None) -> Select[str, str, bytes]:
    query = select(
        order_history.c.account_id, order_history.c.event_id, order_history.c.event
    ).where(order_history.c.event_type.in_(FILL_EVENT_TYPES))
    if accounts is not None:
        query = query.where(order_history.c.account_id.in_(accounts))
    return query


async def _account_ids(conn: AsyncConnection) -> set[str]:
    """Every account with cash or a stored position."""
    known = set((await conn.execute(select(accounts.c.account_id))).scalars())
    return known | set((await conn.execute(select(positions.c.account_id).distinct())).scalars())


async def _fill_events_by_account(
    conn: AsyncConnection, scope: Select[str, str, bytes], page_size: int
) -> AsyncIterator[tuple[str, list[Event]]]:
    """The fill events of each account in turn, read a page at a time (keyset paging)."""
    after: tuple[str, str] | None = None
    current: tuple[str, list[Event]] | None = None
    while True:
        query = scope.order_by(order_history.c.account_id, order_history.c.event_id).limit(
            page_size
        )
        if after is not None:
            query = query.where(
                tuple_(order_history.c.account_id, order_history.c.event_id) > tuple_(*after)
            )
        rows = (await conn.execute(query)).all()
        for account_id, event_id, data in rows:
            if current is not None and current[0] != account_id:
                yield current
                current = None
            if current is None:
                current = (account_id, [])
            current[1].append(decode_event(data))
            after = (account_id, event_id)
        if len(rows) < page_size:
            break
    if current is not None:
        yield current


async def _check_account(
    conn: AsyncConnection, account_id: str, events: list[Event], report: VerifyReport
) -> None:
    book = _recompute(account_id, events, report)
    stored = await load_positions(conn, [account_id])
    recomputed = {p.symbol for p in book.positions(account_id)}
    for symbol in sorted(recomputed | {symbol for _, symbol in stored}):
        report.positions += 1
        report.differences += _position_differences(
            account_id, symbol, stored.get((account_id, symbol)), book
        )
    report.differences += await _cash_differences(conn, account_id, book)
    report.accounts += 1


def _recompute(account_id: str, events: list[Event], report: VerifyReport) -> PositionBook:
    book = PositionBook()
    for event in events:
        try:
            fill = fill_from_event(event)
            book.apply(fill)
        except ConflictingFill as exc:
            report.differences.append(Difference(account_id, None, "fill", event.id, str(exc)))
        except (TypeError, ValueError) as exc:
            report.differences.append(
                Difference(account_id, None, "fill event", event.id, f"unreadable: {exc}")
            )
    return book


def _recomputed_row(book: PositionBook, account_id: str, symbol: str) -> dict[str, object]:
    fills = book.fills(account_id, symbol)
    p = book.position(account_id, symbol)
    return {
        "quantity": p.quantity,
        "cost_basis": p.cost_basis,
        "realized_pnl": p.realized_pnl,
        "fees": p.fees,
        "fill_count": len(fills),
        "last_filled_at": fills[-1].filled_at,
        "last_fill_id": fills[-1].fill_id,
    }


def _stored_row(row: PositionRow) -> dict[str, object]:
    """The row's stored values but its write time, which a recomputation cannot know."""
    values = position_values(row)
    del values["updated_at"]
    return values


def _position_differences(
    account_id: str, symbol: str, stored: PositionRow | None, book: PositionBook
) -> list[Difference]:
    has_fills = bool(book.fills(account_id, symbol))
    if stored is None or not has_fills:
        found, expected = ("missing", "a row") if stored is None else ("a row", "missing")
        return [Difference(account_id, symbol, "position", found, expected)]
    ours, theirs = _stored_row(stored), _recomputed_row(book, account_id, symbol)
    return [
        Difference(account_id, symbol, name, _text(ours[name]), _text(theirs[name]))
        for name in _FIELDS
        if ours[name] != theirs[name]
    ]


async def _cash_differences(
    conn: AsyncConnection, account_id: str, book: PositionBook
) -> list[Difference]:
    query = select(accounts.c.opening_cash, accounts.c.cash).where(
        accounts.c.account_id == account_id
    )
    row = (await conn.execute(query)).first()
    if row is None:
        return []  # fills of an account that does not exist move no cash
    opening, cash = row
    expected = exact_sum([book.cash(account_id)], opening)
    if cash == expected:
        return []
    return [Difference(account_id, None, "cash", _text(cash), _text(expected))]


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)

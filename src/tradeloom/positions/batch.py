"""One batch of fill events applied to positions and cash, inside the caller's transaction.

What is guaranteed, whatever order and however often fills are delivered:

* **Once per fill id.** A fill is recorded in ``position_fills`` the first time its id is
  seen; a redelivery (in the same batch or any later one) changes nothing. The same id with
  other terms is a conflict: logged as an error, counted, never applied.
* **Canonical order.** Each position equals the fold of its distinct fills in
  ``(filled_at, fill_id)`` order (see :mod:`tradeloom.domain.positions`). When every new fill
  of a position sorts after its last applied fill, the new fills are folded onto the stored
  row (the fast path); a position without a row is folded from flat; otherwise the position
  is refolded from all its stored fills (the slow path: a late, older fill).
* **Cash** is a sum, so it simply moves by the new fills' cash deltas (on PostgreSQL the
  database adds them, exactly, and returns the cash after). A fill of an account
  that does not exist is kept (a broker report is never dropped) and its position updated,
  but there is no cash to move: it is logged as an error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from tradeloom.domain.errors import DomainError
from tradeloom.domain.events import Event
from tradeloom.domain.numbers import ZERO
from tradeloom.domain.positions import (
    Fill,
    Position,
    canonical_order,
    cash_after,
    fill_from_event,
    fold_position,
)
from tradeloom.positions.repository import (
    PositionKey,
    PositionRow,
    ReceivedFill,
    load_fills,
    load_position_fills,
    lock_positions_of,
    record_fills,
    save_positions_and_cash,
)

log = structlog.get_logger("tradeloom.positions")


@dataclass(frozen=True, slots=True)
class PositionChange:
    """A position after a batch: its row, its account's cash (None for an unknown account),
    its newest fill in canonical order, and the last event of the batch that moved it."""

    row: PositionRow
    cash: Decimal | None
    last_fill: Fill
    cause: Event


@dataclass
class BatchOutcome:
    """What became of each fill event of a batch, and every position it changed."""

    applied: list[Event] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    conflicts: list[Event] = field(default_factory=list)
    invalid: list[Event] = field(default_factory=list)
    changes: list[PositionChange] = field(default_factory=list)


@dataclass
class _Candidate:
    received: ReceivedFill
    event: Event


async def apply_fill_events(
    conn: AsyncConnection, events: Sequence[Event], now: datetime
) -> BatchOutcome:
    """Apply the fill events among ``events`` (others are skipped); see the module docstring."""
    outcome = BatchOutcome()
    candidates = _first_of_each_fill(events, outcome)
    recorded = await record_fills(conn, [c.received for c in candidates], now)
    new = [c for c in candidates if c.received.fill.fill_id in recorded.inserted]
    known = [c for c in candidates if c.received.fill.fill_id not in recorded.inserted]
    stored = recorded.positions
    if known:
        await _classify_known(conn, known, outcome)
        # A twin that stored some of these fills may have created positions this batch's
        # first statement could not see yet (see record_fills): read the absent ones again.
        absent = {(c.received.fill.account_id, c.received.fill.symbol) for c in new} - set(stored)
        stored = {**stored, **await lock_positions_of(conn, absent)}
    outcome.applied.extend(c.event for c in new)
    if new:
        fills = [c.received.fill for c in new]
        rows = await _advance_positions(conn, fills, stored, now)
        cash = await save_positions_and_cash(
            conn, [row for row, _ in rows.values()], stored.keys(), _cash_deltas(fills)
        )
        for account_id in sorted({fill.account_id for fill in fills} - set(cash)):
            log.error("positions.fill_of_unknown_account", account_id=account_id)
        outcome.changes.extend(_changes(new, rows, cash))
    return outcome


def _first_of_each_fill(events: Sequence[Event], outcome: BatchOutcome) -> list[_Candidate]:
    """The batch's fills, one per fill id (the first); later copies are duplicates or, with
    other terms, conflicts; events that do not make a valid fill are invalid."""
    first: dict[str, _Candidate] = {}
    for event in events:
        try:
            fill = fill_from_event(event)
        except TypeError:
            continue  # not a fill event: nothing for positions
        except DomainError as exc:
            log.error("positions.invalid_fill", event_id=event.id, why=str(exc))
            outcome.invalid.append(event)
            continue
        seen = first.get(fill.fill_id)
        if seen is None:
            first[fill.fill_id] = _Candidate(ReceivedFill(fill, event.id), event)
        else:
            _same_or_conflict(seen.received.fill, fill, event, outcome)
    return list(first.values())


async def _classify_known(
    conn: AsyncConnection, known: list[_Candidate], outcome: BatchOutcome
) -> None:
    stored = await load_fills(conn, (c.received.fill.fill_id for c in known))
    for candidate in known:
        fill = candidate.received.fill
        _same_or_conflict(stored[fill.fill_id], fill, candidate.event, outcome)


def _same_or_conflict(kept: Fill, fill: Fill, event: Event, outcome: BatchOutcome) -> None:
    if kept == fill:
        outcome.duplicates.append(event)
        return
    log.error(
        "positions.conflicting_fill",
        fill_id=fill.fill_id,
        event_id=event.id,
        kept=repr(kept),
        refused=repr(fill),
    )
    outcome.conflicts.append(event)


async def _advance_positions(
    conn: AsyncConnection,
    new: list[Fill],
    stored: dict[PositionKey, PositionRow],
    now: datetime,
) -> dict[PositionKey, tuple[PositionRow, Fill]]:
    """Fold the new fills (already stored in ``position_fills``) into their positions; each
    position's row and newest fill. A position whose new fills all come after its last one
    is folded on from its row; one without a row is folded from flat (a position's row and
    fills are written in one transaction, so no row means no earlier fills); any other (a
    late fill: the slow path) is refolded from all its stored fills, read in one statement."""
    by_key: dict[PositionKey, list[Fill]] = defaultdict(list)
    for fill in new:
        by_key[(fill.account_id, fill.symbol)].append(fill)
    advanced: dict[PositionKey, tuple[PositionRow, Fill]] = {}
    late: list[PositionKey] = []
    for key in sorted(by_key):
        ordered = canonical_order(by_key[key])
        current = stored.get(key)
        if current is None:
            advanced[key] = _row(key, ordered, fold_position(*key, ordered), len(ordered), now)
        elif current.last_key < ordered[0].sort_key:
            position = fold_position(*key, ordered, start=current.position)
            advanced[key] = _row(key, ordered, position, current.fill_count + len(ordered), now)
        else:
            late.append(key)
    for key, fills in (await load_position_fills(conn, late)).items():
        ordered = canonical_order(fills)
        advanced[key] = _row(key, ordered, fold_position(*key, ordered), len(ordered), now)
    return dict(sorted(advanced.items()))


def _row(
    key: PositionKey, ordered: list[Fill], position: Position, count: int, now: datetime
) -> tuple[PositionRow, Fill]:
    last = ordered[-1]
    return PositionRow(position, count, last.filled_at, last.fill_id, now), last


def _cash_deltas(new: list[Fill]) -> dict[str, Decimal]:
    """How much each account's cash moves: the sum of its new fills' cash deltas (a sum, so
    the order does not matter)."""
    by_account: dict[str, list[Fill]] = defaultdict(list)
    for fill in new:
        by_account[fill.account_id].append(fill)
    return {account_id: cash_after(ZERO, fills) for account_id, fills in by_account.items()}


def _changes(
    new: list[_Candidate],
    rows: dict[PositionKey, tuple[PositionRow, Fill]],
    cash: dict[str, Decimal],
) -> list[PositionChange]:
    causes: dict[PositionKey, Event] = {}
    for candidate in new:  # delivery order: the last event of each position wins
        fill = candidate.received.fill
        causes[(fill.account_id, fill.symbol)] = candidate.event
    return [
        PositionChange(row, cash.get(key[0]), last, causes[key])
        for key, (row, last) in rows.items()
    ]

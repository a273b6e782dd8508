"""One batch of fill events applied to positions and cash, inside the caller's transaction.

What is guaranteed, whatever order and however often fills are delivered:

* **Once per fill id.** A fill is recorded in ``position_fills`` the first time its id is
  seen; a redelivery (in the same batch or any later one) changes nothing. The same id with
  other terms is a conflict: logged as an error, counted, never applied.
* **Canonical order.** Each position equals the fold of its distinct fills in
  ``(filled_at, fill_id)`` order (see :mod:`tradeloom.domain.positions`). When every new fill
  of a position sorts after its last applied fill, the new fills are folded onto the stored
  row (the fast path); otherwise, and when no row exists yet, the position is refolded from
  all its stored fills (the slow path: a late, older fill).
* **Cash** is a sum, so it simply moves by the new fills' cash deltas. A fill of an account
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
from tradeloom.domain.positions import (
    Fill,
    canonical_order,
    cash_after,
    fill_from_event,
    fold_position,
)
from tradeloom.positions.repository import (
    PositionKey,
    PositionRow,
    ReceivedFill,
    insert_fills,
    load_cash,
    load_fills,
    load_position_fills,
    lock_positions_of,
    save_cash,
    save_positions,
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
    inserted = await insert_fills(conn, [c.received for c in candidates], now)
    new = [c for c in candidates if c.received.fill.fill_id in inserted]
    known = [c for c in candidates if c.received.fill.fill_id not in inserted]
    await _classify_known(conn, known, outcome)
    outcome.applied.extend(c.event for c in new)
    if new:
        rows = await _advance_positions(conn, new, now)
        cash = await _move_cash(conn, [c.received.fill for c in new])
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
    conn: AsyncConnection, new: list[_Candidate], now: datetime
) -> dict[PositionKey, tuple[PositionRow, Fill]]:
    """Fold the new fills into their positions; each position's row and newest fill."""
    by_key: dict[PositionKey, list[Fill]] = defaultdict(list)
    for candidate in new:
        fill = candidate.received.fill
        by_key[(fill.account_id, fill.symbol)].append(fill)
    stored = await lock_positions_of(conn, by_key.keys())
    advanced = {}
    for key in sorted(by_key):
        advanced[key] = await _advance(conn, key, stored.get(key), by_key[key], now)
    await save_positions(conn, (row for row, _ in advanced.values()), stored.keys())
    return advanced


async def _advance(
    conn: AsyncConnection,
    key: PositionKey,
    current: PositionRow | None,
    new: list[Fill],
    now: datetime,
) -> tuple[PositionRow, Fill]:
    """The position after ``new`` (already stored in ``position_fills``): folded on from
    ``current`` when every new fill comes after its last one; folded from flat when there is
    no row yet (a position's row and fills are written in one transaction, so no row means no
    earlier fills); else refolded from all its stored fills (a late fill: the slow path)."""
    ordered = canonical_order(new)
    if current is None:
        position = fold_position(*key, ordered)
        count = len(ordered)
    elif current.last_key < ordered[0].sort_key:
        position = fold_position(*key, ordered, start=current.position)
        count = current.fill_count + len(ordered)
    else:
        ordered = canonical_order(await load_position_fills(conn, key))
        position = fold_position(*key, ordered)
        count = len(ordered)
    last = ordered[-1]
    return PositionRow(position, count, last.filled_at, last.fill_id, now), last


async def _move_cash(conn: AsyncConnection, new: list[Fill]) -> dict[str, Decimal]:
    """Add the new fills' cash deltas to their accounts; the cash after, by account."""
    by_account: dict[str, list[Fill]] = defaultdict(list)
    for fill in new:
        by_account[fill.account_id].append(fill)
    cash = await load_cash(conn, by_account, for_update=True)
    for account_id in sorted(by_account):
        if account_id not in cash:
            log.error("positions.fill_of_unknown_account", account_id=account_id)
            continue
        cash[account_id] = cash_after(cash[account_id], by_account[account_id])
    await save_cash(conn, cash)
    return cash


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

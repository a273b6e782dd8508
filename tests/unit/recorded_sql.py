"""The SQL statements a block of code sends, for tests that pin how many round trips a batch
costs or that a statement is not sent at all."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event

from tradeloom.storage.database import Database


@contextlib.contextmanager
def recorded_statements(database: Database) -> Iterator[list[str]]:
    """Yield a list that collects the text of every statement sent through ``database`` in the
    block (BEGIN and COMMIT are not statements here: the driver sends them apart)."""
    sent: list[str] = []

    # Sync seam: engine events run inside the driver's greenlet, synchronously.
    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        sent.append(statement)

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)

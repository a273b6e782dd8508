"""Alembic's entry point, run only through :mod:`tradeloom.storage.migrate`.

That module hands over an open connection, already inside the transaction (and, on
PostgreSQL, holding the migration lock) in which every pending revision runs; nothing here
reads an ini file or a URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from tradeloom.storage.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if context.is_offline_mode() or not isinstance(_connection, Connection):
    raise RuntimeError(
        "run migrations with tradeloom.storage.migrate (`tradeloom db upgrade`), "
        "which passes a live connection"
    )
_run(_connection)

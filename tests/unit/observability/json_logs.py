"""The log lines a test causes, as the platform writes them: through ``configure_logging``'s
own pipeline, parsed back from JSON.

Not ``structlog.testing.capture_logs``: it swaps the processors for a recorder, so the lines
it records never pass ``merge_contextvars`` and miss exactly the context these tests are
about.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from tradeloom.observability.logging import configure_logging


class JsonLines:
    """What was logged since the capture began, one dict per line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.all() if line.get("event") == event]

    def one(self, event: str) -> dict[str, Any]:
        found = self.named(event)
        assert len(found) == 1, f"expected one {event!r} line, got {found or self.all()}"
        return found[0]


@contextmanager
def captured_json_logs(service: str = "test") -> Iterator[JsonLines]:
    """Log as ``service`` into a :class:`JsonLines` for the block; then put back the logging
    configuration (structlog's and the standard library's) that was there before."""
    lines = JsonLines()
    root, alembic = logging.getLogger(), logging.getLogger("alembic")
    saved = (structlog.get_config(), root.handlers[:], root.level, alembic.level)
    configure_logging(service, "INFO", lines.stream)
    try:
        yield lines
    finally:
        config, handlers, level, alembic_level = saved
        structlog.configure(**config)
        root.handlers[:], root.level = handlers, level
        alembic.setLevel(alembic_level)

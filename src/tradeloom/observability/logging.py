"""Structured JSON logs.

Every line carries ``service`` and ``level``, plus ``correlation_id`` and ``user_id`` when the
code that logs runs inside :func:`log_context` (they live in contextvars, so they follow a
request or a consumed event across ``await`` without being passed around).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

CONTEXT_KEYS = ("correlation_id", "user_id")


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing, not at configuration:
    a test runner (or a daemon manager) may swap it, and a closed old stream must not end
    logging for the rest of the process."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send structlog and standard-library logs as one JSON object per line to ``stream``
    (standard error by default, so a command's own output on standard out stays clean)."""
    numeric_level = logging.getLevelName(level.upper())
    output: TextIO = stream or _CurrentStderr()  # type: ignore[assignment]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # Alembic narrates every migration step at INFO; only its warnings are worth a line.
    logging.getLogger("alembic").setLevel(max(numeric_level, logging.WARNING))


def _add_service(service: str) -> structlog.types.Processor:
    def add(_: Any, __: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add


@contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """Bind ``correlation_id``, ``user_id`` (and other keys) for every log line in the block."""
    bound = {key: value for key, value in values.items() if value is not None}
    tokens = structlog.contextvars.bind_contextvars(**bound)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)

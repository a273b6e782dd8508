"""Every log line is one JSON object with the service, the level and the request's context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from tradeloom.observability.logging import (
    bind_log_context,
    configure_logging,
    log_context,
    reset_log_context,
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_carry_service_level_and_the_bound_context() -> None:
    stream = io.StringIO()
    configure_logging("oms", "INFO", stream)
    log = structlog.get_logger()
    with log_context(correlation_id="corr-7", user_id="alice"):
        log.info("order.placed", order_id="o-1")
        logging.getLogger("sqlalchemy").warning("slow query")
    log.info("after")
    placed, stdlib, after = lines(stream)
    assert placed["service"] == "oms"
    assert placed["level"] == "info"
    assert (placed["correlation_id"], placed["user_id"], placed["order_id"]) == (
        "corr-7",
        "alice",
        "o-1",
    )
    assert stdlib["correlation_id"] == "corr-7"
    assert stdlib["level"] == "warning"
    assert "correlation_id" not in after


def test_lines_below_the_level_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging("risk", "WARNING", stream)
    structlog.get_logger().info("chatty")
    structlog.get_logger().error("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_a_none_value_hides_an_outer_binding_for_the_block() -> None:
    stream = io.StringIO()
    configure_logging("consumer", "INFO", stream)
    log = structlog.get_logger()
    with log_context(correlation_id="request", user_id="alice"):
        with log_context(correlation_id="event", user_id=None):
            log.info("inner")
        log.info("outer")
    inner, outer = lines(stream)
    assert inner["correlation_id"] == "event"
    assert "user_id" not in inner
    assert (outer["correlation_id"], outer["user_id"]) == ("request", "alice")


def test_a_reset_also_undoes_later_binds_of_its_keys() -> None:
    """What lets a request's middleware undo the user the auth dependency bound after it."""
    tokens = bind_log_context(correlation_id="request", user_id=None)
    bind_log_context(user_id="alice")
    assert structlog.contextvars.get_contextvars() == {
        "correlation_id": "request",
        "user_id": "alice",
    }
    reset_log_context(tokens)
    assert structlog.contextvars.get_contextvars() == {}

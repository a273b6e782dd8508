"""Argument checks shared by both adapters, so they refuse the same inputs with the same errors."""

from __future__ import annotations


def check_ttl(ttl: float | None) -> None:
    """Refuse a TTL that is not a positive number of seconds (None means no expiry)."""
    if ttl is not None and ttl <= 0:
        raise ValueError(f"ttl must be positive seconds, got {ttl!r}")


def check_rate_limit(limit: int, window: float) -> None:
    """Refuse a rate limit below one hit or a window that is not positive seconds."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    if window <= 0:
        raise ValueError(f"window must be positive seconds, got {window!r}")

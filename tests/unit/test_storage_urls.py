"""Settings URLs map to the async drivers; an in-memory SQLite database is refused."""

from __future__ import annotations

import pytest

from tradeloom.storage.database import async_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///var/tradeloom.db", "sqlite+aiosqlite:///var/tradeloom.db"),
        ("sqlite:////abs/path/t.db", "sqlite+aiosqlite:////abs/path/t.db"),
        ("sqlite+aiosqlite:///t.db", "sqlite+aiosqlite:///t.db"),
        ("postgresql://postgres@db:5432/tl", "postgresql+asyncpg://postgres@db:5432/tl"),
        ("postgres://postgres@db:5432/tl", "postgresql+asyncpg://postgres@db:5432/tl"),
        ("postgresql+asyncpg://u:pw@db/tl", "postgresql+asyncpg://u:pw@db/tl"),
    ],
)
def test_settings_urls_map_to_async_drivers(given: str, expected: str) -> None:
    assert async_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize("given", ["sqlite://", "sqlite:///:memory:", "mysql://u@h/db"])
def test_unusable_urls_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match=r"expected|file path"):
        async_url(given)

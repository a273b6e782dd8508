"""Settings: defaults that need no servers, and one clear line for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradeloom.config import ConfigError, Service, load_settings


def test_the_defaults_are_the_embedded_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "BUS_URL", "CACHE_URL", "ARCHIVE_URL"):
        monkeypatch.delenv(f"TRADELOOM_{name}", raising=False)
    settings = load_settings()
    assert settings.database_url.startswith("sqlite:///")
    assert (settings.bus_url, settings.cache_url) == ("memory://", "memory://")
    assert str(settings.archive_path) == "var/archive"


def test_the_environment_sets_production_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADELOOM_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("TRADELOOM_BUS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("TRADELOOM_CACHE_URL", "redis://127.0.0.1:6379/0")
    settings = load_settings()
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/test"
    assert settings.bus_url == "nats://127.0.0.1:4222"
    assert settings.cache_url == "redis://127.0.0.1:6379/0"


def test_command_line_overrides_win_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADELOOM_BUS_URL", "nats://127.0.0.1:4222")
    assert load_settings(bus_url="memory://").bus_url == "memory://"
    assert load_settings(bus_url=None).bus_url == "nats://127.0.0.1:4222"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TRADELOOM_DATABASE_URL", "mysql://root@localhost/x", "sqlite:///PATH or postgresql://"),
        ("TRADELOOM_BUS_URL", "kafka://broker:9092", "memory:// or nats://"),
        ("TRADELOOM_CACHE_URL", "memcached://x", "memory:// or redis://"),
        ("TRADELOOM_ARCHIVE_URL", "s3://bucket", "folder path"),
        ("TRADELOOM_ARCHIVE_URL", "afile", "folder path, but 'afile' exists and is not a folder"),
        ("TRADELOOM_ARCHIVE_URL", "afile/sub", "'afile' exists and is not a folder"),
        ("TRADELOOM_BUS_URL", "nats://", "nats://HOST:PORT (the host is missing)"),
        ("TRADELOOM_BUS_URL", "nats://127.0.0.1:notaport", "nats://HOST:PORT (the port must be"),
        ("TRADELOOM_BUS_URL", "nats://127.0.0.1:0", "a number from 1 to 65535"),
        ("TRADELOOM_BUS_URL", "nats://[::1", "memory:// or nats://HOST:PORT"),
        ("TRADELOOM_CACHE_URL", "redis://127.0.0.1:abc/0", "redis://HOST:PORT/DB (the port"),
        ("TRADELOOM_CACHE_URL", "redis://127.0.0.1:6379/notadb", "DB is a number, not 'notadb'"),
        ("TRADELOOM_CACHE_URL", "redis:///0", "redis://HOST:PORT/DB (the host is missing)"),
        ("TRADELOOM_CACHE_URL", "unix://", "unix:///PATH/TO/SOCKET"),
        ("TRADELOOM_DATABASE_URL", "postgresql://127.0.0.1:abc/db", "HOST:PORT/DB (the port"),
        ("TRADELOOM_DATABASE_URL", "postgresql://127.0.0.1:99999/db", "from 1 to 65535"),
        ("TRADELOOM_DATABASE_URL", "sqlite:///afile/x.db", "'afile' exists and is not a folder"),
        ("TRADELOOM_DATABASE_URL", "sqlite:///.", "'.' is a folder"),
        ("TRADELOOM_DATABASE_URL", "sqlite:///:memory:", "SQLite needs a file path"),
        ("TRADELOOM_HTTP_PORT", "eighty", "integer"),
        ("TRADELOOM_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_was_expected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a regular file where a folder is expected")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"{variable}={value!r} is invalid")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("database_url", "postgresql:///test?host=/var/run/postgresql"),  # a unix socket
        ("database_url", "postgresql:///test"),  # libpq's default host
        ("database_url", "postgres://trader:pw@[::1]:5432/tl"),
        ("database_url", "sqlite:///not/yet/there/t.db"),  # the folders are created on start
        ("bus_url", "tls://nats.example:4222"),
        ("bus_url", "nats://user:pw@127.0.0.1"),
        ("cache_url", "redis://127.0.0.1:6379"),
        ("cache_url", "redis://127.0.0.1:6379/"),
        ("cache_url", "redis://127.0.0.1:6379/0/"),
        ("cache_url", "rediss://cache.example/15"),
        ("cache_url", "unix:///run/redis.sock?db=2"),
        ("archive_url", "not/yet/there"),
        ("archive_url", "file:///tmp"),
    ],
)
def test_every_usable_url_form_is_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert getattr(load_settings(**{field: value}), field) == value


SHARED = {
    "database_url": "postgresql://postgres@127.0.0.1:5432/test",
    "bus_url": "nats://127.0.0.1:4222",
    "cache_url": "redis://127.0.0.1:6379/0",
}


def test_a_process_runs_every_service_unless_told_otherwise() -> None:
    assert load_settings().service_set == frozenset(Service)
    assert load_settings(**SHARED, services="none").service_set == frozenset()
    assert load_settings(**SHARED, services=" execution, read-side ").service_set == {
        Service.EXECUTION,
        Service.READ_SIDE,
    }


@pytest.mark.parametrize("value", ["bogus", "execution,bogus", ","])
def test_an_unknown_service_is_named_with_the_choices(value: str) -> None:
    with pytest.raises(ConfigError, match=r"TRADELOOM_SERVICES=.*market-data, execution"):
        load_settings(**SHARED, services=value)


@pytest.mark.parametrize(
    ("embedded", "named"),
    [
        ({"bus_url": "memory://"}, "TRADELOOM_BUS_URL"),
        ({"cache_url": "memory://"}, "TRADELOOM_CACHE_URL"),
        ({"database_url": "sqlite:///var/x.db"}, "TRADELOOM_DATABASE_URL"),
    ],
)
def test_splitting_services_over_an_embedded_backend_is_refused(
    embedded: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=rf"TRADELOOM_SERVICES='none'.*set {named}="):
        load_settings(**{**SHARED, **embedded}, services="none")

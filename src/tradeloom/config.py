"""Settings, from ``TRADELOOM_*`` environment variables or the command line.

A bad value stops start-up with one line naming the variable and what was expected
(:func:`load_settings` raises :class:`ConfigError`; the CLI prints it and exits 2).
"""

from __future__ import annotations

import os
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "TRADELOOM_"

_DATABASE_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg", "postgres")
_PORT_EXPECTED = "the port must be a number from 1 to 65535"


class Service(StrEnum):
    """A consuming service a process may run; every process also serves the API (commands and
    queries need no consumer) and relays its own outbox. Split them across processes to use
    more than one core: each group is a consumer group on the bus, so several processes
    running one service share its work.

    * ``market-data``: ``market.price`` into the last-price cache, candles and the fan-out;
    * ``execution``: the broker gateway and paper broker (with its own price feed), the
      execution engine, and what keeps the command side current from order events (the OMS's
      order rows, risk's exposures). The paper broker is one simulated venue per process and
      its price feed one consumer group: run ONE execution process with it (a second would
      take half the price partitions, and each venue would see half the symbols). On
      PostgreSQL this is enforced: the execution engine consumes commands only while it holds
      an advisory lock, so a second execution process stands by (consuming no command) and
      takes over, reconciling first, when the first stops or loses its database session;
    * ``read-side``: the order read model, positions and P&L, notifications.
    """

    MARKET_DATA = "market-data"
    EXECUTION = "execution"
    READ_SIDE = "read-side"


ALL_SERVICES = frozenset(Service)


def parse_services(value: str) -> frozenset[Service]:
    """``"all"``, ``"none"`` or a comma-separated list of :class:`Service` names."""
    text = value.strip().lower()
    if text == "all":
        return ALL_SERVICES
    if text == "none":
        return frozenset()
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in {s.value for s in Service}]
    if unknown or not names:
        expected = ", ".join(s.value for s in Service)
        raise ValueError(f"expected all, none or a comma-separated list of: {expected}")
    return frozenset(Service(name) for name in names)


class ConfigError(Exception):
    """A setting has a value Tradeloom cannot use. The message is one line, fit for a user."""


def _server_url(value: str, schemes: tuple[str, ...], expected: str) -> SplitResult:
    """``value`` split, if it has one of ``schemes``, a host and (if any) a valid port."""
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced [IPv6] bracket
        raise ValueError(expected) from None
    if parts.scheme not in schemes:
        raise ValueError(expected)
    try:
        port = parts.port  # parsed on access: a port that is not a number raises here
    except ValueError:
        raise ValueError(f"{expected} ({_PORT_EXPECTED})") from None
    if not parts.hostname:
        raise ValueError(f"{expected} (the host is missing)")
    if port == 0:
        raise ValueError(f"{expected} ({_PORT_EXPECTED})")
    return parts


def nearest_existing(path: Path) -> Path | None:
    """``path`` if it exists, else the nearest of its parents that does: what decides whether
    ``path`` is, or can become, a folder (settings check it at start, ``/readyz`` later)."""
    return next((p for p in (path, *path.parents) if os.path.lexists(p)), None)


def _not_a_folder(path: Path) -> str | None:
    """Why ``path`` can neither be nor become a folder (it, or the nearest of its parents that
    exists, is something else), or None when it is one or can be created."""
    existing = nearest_existing(path)
    if existing is None or os.path.isdir(existing):
        return None
    return f"{str(existing)!r} exists and is not a folder"


def _check_sqlite_path(database: str | None, expected: str) -> None:
    """The file must be named (an in-memory database is private to each pooled connection),
    must not be a folder, and its folder must exist or be creatable."""
    if not database or database == ":memory:":
        raise ValueError(f"{expected} (SQLite needs a file path)")
    path = Path(database).expanduser()
    if os.path.isdir(path):
        raise ValueError(f"{expected}, but {database!r} is a folder")
    problem = _not_a_folder(path.parent)
    if problem:
        raise ValueError(f"{expected}, but {problem}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite:///var/tradeloom.db",
        description="sqlite:///PATH (embedded default) or postgresql://USER@HOST:PORT/DB",
    )
    bus_url: str = Field(default="memory://", description="memory:// or nats://HOST:PORT")
    cache_url: str = Field(default="memory://", description="memory:// or redis://HOST:PORT/DB")
    archive_url: str = Field(default="var/archive", description="a folder for the audit archive")
    namespace: str = Field(
        default="tl",
        pattern=r"^[a-z][a-z0-9_]{0,30}$",
        description="prefix of NATS streams and Redis keys, so environments can share servers",
    )
    service_name: str = Field(default="tradeloom", description="the service name in logs")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    bus_partitions: int = Field(
        default=8, ge=1, le=256, description="partitions per topic (NATS subjects per topic)"
    )
    bus_max_replicas: int = Field(
        default=1, ge=1, le=5, description="replicas the NATS cluster can hold per stream"
    )
    universe_file: Path | None = Field(
        default=None, description="CSV of tradable instruments (default: 50 built in)"
    )
    risk_max_order_notional: Decimal = Field(
        default=Decimal(1_000_000), gt=0, description="default per-user max order notional"
    )
    risk_max_open_orders: int = Field(default=200, ge=0, description="default max open orders")
    risk_max_concentration: Decimal = Field(
        default=Decimal("0.20"), ge=0, le=1, description="default max share of equity per name"
    )
    risk_order_rate: int = Field(default=50, ge=1, description="default orders per rate window")
    risk_order_rate_window: float = Field(default=1.0, gt=0, description="seconds")
    broker_timeout: float = Field(default=10.0, gt=0, description="seconds to await the broker")
    paper_latency: float = Field(default=0.0, ge=0, description="paper broker latency, seconds")
    paper_slippage_ticks: int = Field(default=0, ge=0, description="paper market-order slippage")
    session_ttl: float = Field(
        default=28_800, gt=0, description="seconds an idle web session lives (sliding)"
    )
    session_max_lifetime: float = Field(
        default=86_400, gt=0, description="seconds a web session lives at most"
    )
    rate_limit_orders: int = Field(default=20, ge=1, description="order requests per user/window")
    rate_limit_reads: int = Field(default=50, ge=1, description="read requests per user/window")
    rate_limit_window: float = Field(default=1.0, gt=0, description="seconds")
    rate_limit_login: int = Field(default=10, ge=1, description="logins per address+user/window")
    rate_limit_login_window: float = Field(default=60.0, gt=0, description="seconds")
    password_time_cost: int = Field(default=3, ge=1, description="argon2 passes")
    password_memory_cost: int = Field(default=65_536, ge=8, description="argon2 KiB")
    password_parallelism: int = Field(default=4, ge=1, description="argon2 lanes")
    stream_quotes_per_second: float = Field(
        default=2.0, gt=0, le=50, description="SSE quotes per symbol per second, at most"
    )
    stream_heartbeat: float = Field(default=15.0, gt=0, description="SSE heartbeat, seconds")
    services: str = Field(
        default="all",
        description="consuming services this process runs: all, none, or a list of "
        "market-data, execution, read-side",
    )
    http_host: str = Field(default="127.0.0.1", description="address the web app listens on")
    http_port: int = Field(default=8000, ge=1, le=65535, description="port the web app uses")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        expected = "expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in _DATABASE_SCHEMES:
            raise ValueError(expected)
        try:
            url = make_url(value.replace("postgres://", "postgresql://", 1))
        except ArgumentError:
            raise ValueError(expected) from None
        except ValueError:  # SQLAlchemy reads the port as it parses
            raise ValueError(f"{expected} ({_PORT_EXPECTED})") from None
        port = url.port
        if url.get_backend_name() == "sqlite":
            _check_sqlite_path(url.database, expected)
        elif port is not None and not 0 < port < 65536:
            raise ValueError(f"{expected} ({_PORT_EXPECTED})")
        # No host is libpq's default (PGHOST or the local socket), and ?host=/run/postgresql
        # names a socket folder: both are legitimate, so a host is not required here.
        return value

    @field_validator("bus_url")
    @classmethod
    def _bus_url(cls, value: str) -> str:
        if value == "memory://":
            return value
        _server_url(value, ("nats", "tls"), "expected memory:// or nats://HOST:PORT")
        return value

    @field_validator("cache_url")
    @classmethod
    def _cache_url(cls, value: str) -> str:
        expected = "expected memory:// or redis://HOST:PORT/DB"
        if value == "memory://":
            return value
        if value.startswith("unix://"):
            if not urlsplit(value).path:
                raise ValueError(f"{expected} or unix:///PATH/TO/SOCKET")
            return value
        parts = _server_url(value, ("redis", "rediss"), expected)
        db = parts.path.strip("/")
        if db and not (db.isascii() and db.isdigit()):
            raise ValueError(f"{expected} (DB is a number, not {db!r})")
        return value

    @field_validator("archive_url")
    @classmethod
    def _archive_url(cls, value: str) -> str:
        if "://" in value and not value.startswith("file://"):
            raise ValueError("expected a folder path or file:///PATH")
        if not value.strip():
            raise ValueError("expected a folder path")
        problem = _not_a_folder(Path(value.removeprefix("file://")).expanduser())
        if problem:
            raise ValueError(f"expected a folder path, but {problem}")
        return value

    @field_validator("services")
    @classmethod
    def _services(cls, value: str, info: ValidationInfo) -> str:
        services = parse_services(value)
        if services != ALL_SERVICES:
            # The other services run in other processes: everything they share must be
            # shared for real (risk's reservations and prices live in the cache; on SQLite
            # every process would run an outbox relay of its own on one file).
            embedded = [
                name
                for name, is_embedded in (
                    ("TRADELOOM_BUS_URL=nats://...", info.data.get("bus_url") == "memory://"),
                    ("TRADELOOM_CACHE_URL=redis://...", info.data.get("cache_url") == "memory://"),
                    (
                        "TRADELOOM_DATABASE_URL=postgresql://...",
                        str(info.data.get("database_url", "")).startswith("sqlite"),
                    ),
                )
                if is_embedded
            ]
            if embedded:
                raise ValueError(
                    "running only some services here means the rest run in other processes, "
                    f"which needs shared servers: set {', '.join(embedded)} (the embedded "
                    "defaults do not cross processes)"
                )
        return ",".join(sorted(services)) or "none"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
        return level

    @property
    def service_set(self) -> frozenset[Service]:
        return parse_services(self.services)

    @property
    def archive_path(self) -> Path:
        return Path(self.archive_url.removeprefix("file://")).expanduser()


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; ``overrides`` (from the command line) win.

    Overrides that are None are ignored, so CLI options can be passed through unconditionally.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            f"{ENV_PREFIX}{field.upper()}={error.get('input')!r} is invalid: {message}"
        ) from None

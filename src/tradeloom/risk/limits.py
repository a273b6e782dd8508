"""Per-user risk limits and trading states, kept in the cache and set by an administrator.

* ``risk:limits:USER`` holds JSON of the fields an administrator overrode for that user; every
  other field comes from the defaults (from settings), so changing a default reaches every user
  who has no override of it.
* ``risk:state:user:USER`` and ``risk:state:platform`` hold a :class:`TradingState`. A user's
  effective state is the stricter of the two: ``halted`` (the kill switch: nothing passes) over
  ``reduce_only`` (only orders that shrink a position pass) over ``active``.

Everything is read on every check (with the rest of what a check reads, in one round trip),
so a change applies to the next order in every process. An absent key means "no override" /
``active``; a cache that cannot be read raises, and the engine turns that into a rejection
(fail closed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any

from tradeloom.cache.port import Cache
from tradeloom.domain.errors import DomainError
from tradeloom.domain.numbers import ZERO, exact


class InvalidLimits(DomainError, ValueError):
    code = "risk.invalid_limits"


class TradingState(StrEnum):
    ACTIVE = "active"
    REDUCE_ONLY = "reduce_only"
    HALTED = "halted"

    @property
    def strictness(self) -> int:
        return _STRICTNESS[self]


_STRICTNESS = {TradingState.ACTIVE: 0, TradingState.REDUCE_ONLY: 1, TradingState.HALTED: 2}


class Scope(Enum):
    """The platform-wide scope of a trading state, as opposed to one user id."""

    PLATFORM = "platform"


PLATFORM = Scope.PLATFORM


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """One user's limits. ``max_concentration`` is a fraction of account equity (0.2 = 20%);
    ``order_rate`` orders are admitted per sliding ``order_rate_window`` seconds."""

    max_order_notional: Decimal = Decimal(1_000_000)
    max_open_orders: int = 200
    max_concentration: Decimal = Decimal("0.20")
    order_rate: int = 50
    order_rate_window: float = 1.0

    def __post_init__(self) -> None:
        notional = exact(self.max_order_notional, field="max_order_notional")
        concentration = exact(self.max_concentration, field="max_concentration")
        if notional <= ZERO:
            raise InvalidLimits(f"max_order_notional must be positive, got {notional}")
        if not ZERO <= concentration <= 1:
            raise InvalidLimits(f"max_concentration must be within 0..1, got {concentration}")
        if isinstance(self.max_open_orders, bool) or self.max_open_orders < 0:
            raise InvalidLimits(f"max_open_orders must be >= 0, got {self.max_open_orders}")
        if isinstance(self.order_rate, bool) or self.order_rate < 1:
            raise InvalidLimits(f"order_rate must be >= 1, got {self.order_rate}")
        if not self.order_rate_window > 0:
            raise InvalidLimits(f"order_rate_window must be > 0, got {self.order_rate_window}")
        object.__setattr__(self, "max_order_notional", notional)
        object.__setattr__(self, "max_concentration", concentration)


LIMIT_FIELDS = frozenset(f.name for f in fields(RiskLimits))
_REMEMBERED = 4096  # decoded override values a LimitsStore keeps


def _encode(overrides: dict[str, Any]) -> bytes:
    return json.dumps(
        {k: str(v) if isinstance(v, Decimal) else v for k, v in overrides.items()},
        sort_keys=True,
    ).encode()


def _decode(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    stored: dict[str, Any] = json.loads(raw)
    return {
        k: Decimal(v) if k in ("max_order_notional", "max_concentration") else v
        for k, v in stored.items()
        if k in LIMIT_FIELDS
    }


@dataclass(frozen=True, slots=True)
class UserRiskSettings:
    """What one check reads: the user's limits and the effective trading state."""

    limits: RiskLimits
    state: TradingState


class LimitsStore:
    """Reads and writes limits and trading states through the ``Cache`` port."""

    def __init__(self, cache: Cache, defaults: RiskLimits | None = None) -> None:
        self._cache = cache
        self.defaults = defaults or RiskLimits()
        self._decoded: dict[bytes, RiskLimits] = {}  # stored overrides -> limits (see below)

    async def settings_for(self, user_id: str) -> UserRiskSettings:
        """Limits and effective state in one round trip."""
        return self.settings_from(*await self._cache.get_many(self.keys_for(user_id)))

    @staticmethod
    def keys_for(user_id: str) -> list[str]:
        """The keys :meth:`settings_from` decodes, for a caller that reads them with others."""
        return [_limits_key(user_id), _state_key(user_id), _state_key(PLATFORM)]

    def settings_from(
        self, raw_limits: bytes | None, user_state: bytes | None, platform_state: bytes | None
    ) -> UserRiskSettings:
        """Decode the values read at :meth:`keys_for`.

        Limits are a function of the stored overrides (the defaults never change), so they are
        remembered per stored value: a check decodes and validates a user's overrides once, not
        every time. The memory is bounded: it starts over past ``_REMEMBERED`` values.
        """
        limits = self.defaults
        if raw_limits is not None:
            limits = self._decoded.get(raw_limits) or self._decode_limits(raw_limits)
        states = [_state(user_state), _state(platform_state)]
        return UserRiskSettings(limits, max(states, key=lambda s: s.strictness))

    def _decode_limits(self, raw: bytes) -> RiskLimits:
        if len(self._decoded) >= _REMEMBERED:
            self._decoded.clear()
        limits = self._decoded[raw] = replace(self.defaults, **_decode(raw))
        return limits

    async def limits_for(self, user_id: str) -> RiskLimits:
        return (await self.settings_for(user_id)).limits

    async def set_limits(self, user_id: str, **changes: Any) -> RiskLimits:
        """Override some of the user's limits; returns the resulting limits. Unknown names or
        invalid values raise and store nothing. Concurrent admins never lose each other's
        changes (compare-and-set)."""
        unknown = set(changes) - LIMIT_FIELDS
        if unknown:
            raise InvalidLimits(f"unknown limits: {', '.join(sorted(unknown))}")
        while True:
            raw = await self._cache.get(_limits_key(user_id))
            overrides = {**_decode(raw), **changes}
            limits = replace(self.defaults, **overrides)
            stored = {name: getattr(limits, name) for name in overrides}
            if await self._cache.compare_and_set(_limits_key(user_id), raw, _encode(stored)):
                return limits

    async def reset_limits(self, user_id: str) -> None:
        """Drop every override: the user gets the defaults again."""
        await self._cache.delete(_limits_key(user_id))

    async def set_trading_state(self, scope: str | Scope, state: TradingState) -> None:
        """Set a user's (``scope`` = user id) or the whole platform's (``PLATFORM``) state."""
        await self._cache.set(_state_key(scope), TradingState(state).value.encode())

    async def trading_state(self, scope: str | Scope) -> TradingState:
        """The state set for this scope alone (not combined with the other scope)."""
        return _state(await self._cache.get(_state_key(scope)))

    def describe(self, limits: RiskLimits) -> dict[str, str]:
        """The limits as text, for the CLI and admin APIs."""
        return {name: str(value) for name, value in asdict(limits).items()}


def _state(raw: bytes | None) -> TradingState:
    return TradingState.ACTIVE if raw is None else TradingState(raw.decode())


def _limits_key(user_id: str) -> str:
    return f"risk:limits:{user_id}"


def _state_key(scope: str | Scope) -> str:
    return "risk:state:platform" if scope is PLATFORM else f"risk:state:user:{scope}"

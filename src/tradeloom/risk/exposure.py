"""Per-account exposure in the cache: what open orders reserve, positions, cash from fills.

Counters per account ``A`` (scaled integers, see :mod:`tradeloom.risk.units`):

* ``risk:acct:A:reserved`` money reserved by open buy orders;
* ``risk:acct:A:cash_flow`` net cash of every fill applied (sells in, buys and fees out), so the
  account's cash for risk is its opening cash plus this;
* ``risk:acct:A:open`` open orders; ``risk:acct:A:held`` the symbols it ever held;
* ``risk:acct:A:pos:SYM``, ``…:buying:SYM``, ``…:selling:SYM`` position and the
  quantities open buy and sell orders may still add to or take from it;
* ``risk:order:ID`` one record per reserved order, ``risk:fill:ID`` one marker per applied fill,
  kept ``fill_memory`` seconds (7 days by default, the retention of the order topics, so no
  redelivered fill can outlive its marker).

Guarantees: every change is one atomic script (:mod:`tradeloom.risk.scripts`), so at any moment
``reserved``, ``open``, ``buying`` and ``selling`` are exactly the sums over the reservation
records still present. Reserve checks its bounds and reserves in the same step, so concurrent
orders cannot jointly exceed a bound. Release and fills are idempotent (by order id, by fill id)
and commute with each other. Reservations are conservative: a buy reserves its notional rounded
up, a fill frees at most its own notional, and an order's remainder is freed when it completes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum

from tradeloom.cache.port import Cache
from tradeloom.domain.accounts import check_account_id
from tradeloom.domain.numbers import ZERO, exact
from tradeloom.domain.orders import Side
from tradeloom.risk.scripts import APPLY_FILL, RELEASE, RESERVE
from tradeloom.risk.units import money_units, quantity, quantity_units

FILL_MEMORY = 7 * 24 * 3600.0


class Counter(IntEnum):
    """A counter a bound reads; the value is its position in the RESERVE script's KEYS."""

    RESERVED = 2
    CASH_FLOW = 3
    OPEN_ORDERS = 4
    POSITION = 5
    BUYING = 6
    SELLING = 7


@dataclass(frozen=True, slots=True)
class Bound:
    """``sum(sign * counter) + increment <= limit``, checked atomically when reserving.

    Counters are those of the order's account (and symbol); every number is in the units of
    :mod:`tradeloom.risk.units`. ``code`` and ``message`` describe the rejection if it fails.
    """

    terms: tuple[tuple[int, Counter], ...]
    increment: int
    limit: int
    code: str
    message: str

    def encode(self) -> list[str]:
        args = [str(len(self.terms))]
        for sign, counter in self.terms:
            args += [str(sign), str(int(counter))]
        return [*args, str(self.increment), str(self.limit)]


@dataclass(frozen=True, slots=True)
class OpenReservation:
    """What is left of one order's reservation."""

    order_id: str
    account_id: str
    symbol: str
    side: Side
    remaining: Decimal
    reserved_units: int


@dataclass(frozen=True, slots=True)
class AccountExposure:
    """A read of one account's counters (not atomic across keys: for valuation, not bounds)."""

    cash_flow_units: int
    reserved_units: int
    open_orders: int
    positions: dict[str, Decimal] = field(default_factory=dict)


def _int(value: bytes | None) -> int:
    return 0 if value is None else int(value)


class Exposure:
    """Reserve, release and fill bookkeeping over the ``Cache`` port (see the module doc)."""

    def __init__(self, cache: Cache, *, fill_memory: float = FILL_MEMORY) -> None:
        if fill_memory <= 0:
            raise ValueError("fill_memory must be positive seconds")
        self._cache = cache
        self._fill_memory_ms = str(round(fill_memory * 1000))

    async def reserve(
        self,
        order_id: str,
        account_id: str,
        symbol: str,
        side: Side,
        quantity_units: int,
        reserve_units: int,
        bounds: Sequence[Bound],
    ) -> int:
        """Check ``bounds`` and reserve, atomically. Returns 0 when reserved, -1 when this order
        id holds a reservation already (nothing changes), or the 1-based number of the first
        bound that would be exceeded (nothing changes)."""
        record = f"{side.value}|{quantity_units}|{reserve_units}|{account_id}|{symbol}"
        args = [record, side.value, str(quantity_units), str(reserve_units), str(len(bounds))]
        for bound in bounds:
            args += bound.encode()
        keys = [
            _order_key(order_id),
            *self._account_keys(account_id, "reserved", "cash_flow", "open"),
            *self._symbol_keys(account_id, symbol),
        ]
        result = await self._cache.run_script(RESERVE, keys, args)
        if not isinstance(result, int):
            raise TypeError(f"the reserve script answered {result!r}")
        return result

    async def release(self, order_id: str) -> bool:
        """Free what is left of the order's reservation. True if there was one; releasing
        twice, or an order that was never reserved, changes nothing."""
        found = await self.reservation(order_id)
        if found is None:
            return False
        account, symbol = found.account_id, found.symbol
        keys = [
            _order_key(order_id),
            *self._account_keys(account, "reserved", "open"),
            *self._symbol_keys(account, symbol)[1:],
        ]
        return await self._cache.run_script(RELEASE, keys, []) == 1

    async def apply_fill(
        self,
        account_id: str,
        symbol: str,
        side: Side,
        fill_quantity: Decimal,
        price: Decimal,
        order_id: str,
        fill_id: str,
        fee: Decimal = ZERO,
    ) -> bool:
        """Book one fill exactly once (by ``fill_id``); False for a repeat.

        The position moves by the quantity, cash by the notional (a buy's cost rounded up, a
        sell's proceeds rounded down) less ``fee``; the order's open quantity shrinks and its
        reservation by at most the fill's notional, and is released once nothing remains.
        """
        check_account_id(account_id)
        fill_quantity = exact(fill_quantity, field="fill quantity")
        notional = fill_quantity * exact(price, field="fill price")
        buying = side is Side.BUY
        cash = (
            -money_units(notional, round_up=True)
            if buying
            else money_units(notional, round_up=False)
        )
        cash -= money_units(exact(fee, field="fee"), round_up=True)
        keys = [
            f"risk:fill:{fill_id}",
            _order_key(order_id),
            self._symbol_keys(account_id, symbol)[0],
            *self._account_keys(account_id, "cash_flow", "reserved", "open"),
            *self._symbol_keys(account_id, symbol)[1:],
            *self._account_keys(account_id, "held"),
        ]
        args = [
            self._fill_memory_ms,
            side.value,
            str(quantity_units(fill_quantity)),
            str(cash),
            str(money_units(notional, round_up=True) if buying else 0),
            symbol,
        ]
        return await self._cache.run_script(APPLY_FILL, keys, args) == 1

    async def reservation(self, order_id: str) -> OpenReservation | None:
        raw = await self._cache.get(_order_key(order_id))
        if raw is None:
            return None
        side, remaining, reserved, account, symbol = raw.decode().split("|", 4)
        return OpenReservation(
            order_id, account, symbol, Side(side), quantity(int(remaining)), int(reserved)
        )

    async def snapshot(self, account_id: str) -> AccountExposure:
        """The account's counters and every position it holds (two reads)."""
        keys = self._account_keys(account_id, "cash_flow", "reserved", "open", "held")
        cash_flow, reserved, open_orders, held = await self._cache.get_many(keys)
        symbols = held.decode().split("\n") if held else []
        values = await self._cache.get_many([self._symbol_keys(account_id, s)[0] for s in symbols])
        positions = {s: quantity(_int(v)) for s, v in zip(symbols, values, strict=True) if _int(v)}
        return AccountExposure(_int(cash_flow), _int(reserved), _int(open_orders), positions)

    async def symbol_counters(self, account_id: str, symbol: str) -> tuple[int, int, int]:
        """(position, buying, selling) of one symbol, in quantity units."""
        values = await self._cache.get_many(self._symbol_keys(account_id, symbol))
        position, buying, selling = (_int(value) for value in values)
        return position, buying, selling

    @staticmethod
    def _account_keys(account_id: str, *names: str) -> list[str]:
        return [f"risk:acct:{account_id}:{name}" for name in names]

    @staticmethod
    def _symbol_keys(account_id: str, symbol: str) -> list[str]:
        return [f"risk:acct:{account_id}:{name}:{symbol}" for name in ("pos", "buying", "selling")]


def _order_key(order_id: str) -> str:
    return f"risk:order:{order_id}"

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
records still present. Reserve checks its bounds (the order-rate window among them) and
reserves in the same step, so concurrent orders cannot jointly exceed a bound. Release and fills
are idempotent (by order id, by fill id) and commute with each other; :meth:`Exposure.apply`
runs a batch of them in order in one round trip. Reservations are conservative: a buy reserves
its notional rounded up, a fill frees at most its own notional, and an order's remainder is
freed when it completes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum

from tradeloom.cache.port import Cache, ScriptCall
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

    @property
    def keys(self) -> tuple[str, ...]:
        """Keys of its own the bound adds to the script's (none: it reads the counters)."""
        return ()

    def encode(self, first_key: int) -> list[str]:
        """Its tokens in the RESERVE script's bounds text (see :mod:`tradeloom.risk.scripts`);
        ``first_key`` is the KEYS number its own :attr:`keys` will take."""
        args = ["sum", str(len(self.terms))]
        for sign, counter in self.terms:
            args += [str(sign), str(int(counter))]
        return [*args, str(self.increment), str(self.limit)]

    def refusal(self, wait_us: int) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class RateBound:
    """At most ``limit`` orders admitted per sliding ``window`` seconds, counted in ``key``
    (the window of ``Cache.hit_rate_limit``, on the cache's clock).

    Checked in the reserving step in its place among the bounds: an order that reaches it
    and is admitted counts in the window even if a later bound refuses it; an order refused
    by it, by an earlier bound, or as a repeat of a held reservation is not counted.
    """

    key: str
    limit: int
    window: float
    code: str
    message: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def encode(self, first_key: int) -> list[str]:
        window_us = max(1, round(self.window * 1_000_000))
        return ["rate", str(first_key), str(self.limit), str(window_us), secrets.token_hex(8)]

    def refusal(self, wait_us: int) -> str:
        return f"{self.message}; retry in {wait_us / 1_000_000:.3f} s"


AnyBound = Bound | RateBound


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    """``status`` 0: reserved; -1: this order id holds a reservation already (nothing
    changed); n > 0: the 1-based number of the first bound refused (nothing reserved).
    ``wait_us``: for a refused :class:`RateBound`, microseconds until an order would be
    admitted; else 0."""

    status: int
    wait_us: int = 0


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


@dataclass(frozen=True, slots=True)
class ApplyFill:
    """Book one fill (see :meth:`Exposure.apply_fill`)."""

    account_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    order_id: str
    fill_id: str
    fee: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class ReleaseOrder:
    """Free what is left of an order's reservation. With ``account_id`` and ``symbol`` (a
    fill event carries both) its keys are known; without them its record is read first."""

    order_id: str
    account_id: str | None = None
    symbol: str | None = None


ExposureChange = ApplyFill | ReleaseOrder


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
        bounds: Sequence[AnyBound],
    ) -> ReserveOutcome:
        """Check ``bounds`` in order and reserve, atomically (see :class:`ReserveOutcome`)."""
        record = f"{side.value}|{quantity_units}|{reserve_units}|{account_id}|{symbol}"
        keys = [
            _order_key(order_id),
            *self._account_keys(account_id, "reserved", "cash_flow", "open"),
            *self._symbol_keys(account_id, symbol),
        ]
        spec: list[str] = []
        for bound in bounds:
            spec += bound.encode(len(keys) + 1)
            keys += bound.keys
        args = [record, side.value, str(quantity_units), str(reserve_units), " ".join(spec)]
        result = await self._cache.run_script(RESERVE, keys, args)
        match result:
            case [int(status), int(wait_us)]:
                return ReserveOutcome(status, wait_us)
        raise TypeError(f"the reserve script answered {result!r}")

    async def release(self, order_id: str) -> bool:
        """Free what is left of the order's reservation. True if there was one; releasing
        twice, or an order that was never reserved, changes nothing."""
        return (await self.apply([ReleaseOrder(order_id)]))[0]

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
        fill = ApplyFill(account_id, symbol, side, fill_quantity, price, order_id, fill_id, fee)
        return (await self.apply([fill]))[0]

    async def apply(self, changes: Sequence[ExposureChange]) -> list[bool]:
        """Apply fills and releases in the given order, in one round trip (two when a release
        names only its order: the records of all such releases are read first, in one read).

        Each change is one atomic script and idempotent, so a batch that raises midway can
        be applied again whole. Returns, per change, True when it changed something (a fill
        booked, a reservation released). Arguments are checked before anything is sent.
        """
        unknown = [
            c.order_id
            for c in changes
            if isinstance(c, ReleaseOrder) and not (c.account_id and c.symbol)
        ]
        records = await self._reservations(unknown)
        calls: list[ScriptCall] = []
        slots: list[int | None] = []
        for change in changes:
            call = self._call(change, records)
            slots.append(None if call is None else len(calls))
            if call is not None:
                calls.append(call)
        results = await self._cache.run_scripts(calls) if calls else []
        return [slot is not None and results[slot] == 1 for slot in slots]

    def _call(
        self, change: ExposureChange, records: dict[str, OpenReservation]
    ) -> ScriptCall | None:
        if isinstance(change, ApplyFill):
            return self._fill_call(change)
        if change.account_id and change.symbol:
            account, symbol = change.account_id, change.symbol
        elif (found := records.get(change.order_id)) is not None:
            account, symbol = found.account_id, found.symbol
        else:
            return None  # nothing reserved under this order id
        keys = [
            _order_key(change.order_id),
            *self._account_keys(account, "reserved", "open"),
            *self._symbol_keys(account, symbol)[1:],
        ]
        return ScriptCall(RELEASE, keys, ())

    def _fill_call(self, fill: ApplyFill) -> ScriptCall:
        account_id, symbol = check_account_id(fill.account_id), fill.symbol
        fill_quantity = exact(fill.quantity, field="fill quantity")
        notional = fill_quantity * exact(fill.price, field="fill price")
        buying = fill.side is Side.BUY
        cash = (
            -money_units(notional, round_up=True)
            if buying
            else money_units(notional, round_up=False)
        )
        cash -= money_units(exact(fill.fee, field="fee"), round_up=True)
        keys = [
            f"risk:fill:{fill.fill_id}",
            _order_key(fill.order_id),
            self._symbol_keys(account_id, symbol)[0],
            *self._account_keys(account_id, "cash_flow", "reserved", "open"),
            *self._symbol_keys(account_id, symbol)[1:],
            *self._account_keys(account_id, "held"),
        ]
        args = [
            self._fill_memory_ms,
            fill.side.value,
            str(quantity_units(fill_quantity)),
            str(cash),
            str(money_units(notional, round_up=True) if buying else 0),
            symbol,
        ]
        return ScriptCall(APPLY_FILL, keys, args)

    async def reservation(self, order_id: str) -> OpenReservation | None:
        return (await self._reservations([order_id])).get(order_id)

    async def _reservations(self, order_ids: Sequence[str]) -> dict[str, OpenReservation]:
        """The reservations held under ``order_ids`` (absent ones left out), in one read."""
        if not order_ids:
            return {}
        unique = list(dict.fromkeys(order_ids))
        raws = await self._cache.get_many([_order_key(order_id) for order_id in unique])
        found: dict[str, OpenReservation] = {}
        for order_id, raw in zip(unique, raws, strict=True):
            if raw is not None:
                side, remaining, reserved, account, symbol = raw.decode().split("|", 4)
                found[order_id] = OpenReservation(
                    order_id, account, symbol, Side(side), quantity(int(remaining)), int(reserved)
                )
        return found

    async def snapshot(self, account_id: str) -> AccountExposure:
        """The account's counters and every position it holds (two reads)."""
        counters = await self._cache.get_many(self.counter_keys(account_id))
        symbols = held_symbols(counters[-1])
        values = await self._cache.get_many([self.position_key(account_id, s) for s in symbols])
        return account_exposure(counters, zip(symbols, values, strict=True))

    async def symbol_counters(self, account_id: str, symbol: str) -> tuple[int, int, int]:
        """(position, buying, selling) of one symbol, in quantity units."""
        values = await self._cache.get_many(self._symbol_keys(account_id, symbol))
        position, buying, selling = (_int(value) for value in values)
        return position, buying, selling

    def counter_keys(self, account_id: str) -> list[str]:
        """The keys :func:`account_exposure` decodes: cash flow, reserved, open, held."""
        return self._account_keys(account_id, "cash_flow", "reserved", "open", "held")

    def position_key(self, account_id: str, symbol: str) -> str:
        return self._symbol_keys(account_id, symbol)[0]

    @staticmethod
    def _account_keys(account_id: str, *names: str) -> list[str]:
        return [f"risk:acct:{account_id}:{name}" for name in names]

    @staticmethod
    def _symbol_keys(account_id: str, symbol: str) -> list[str]:
        return [f"risk:acct:{account_id}:{name}:{symbol}" for name in ("pos", "buying", "selling")]


def held_symbols(raw: bytes | None) -> list[str]:
    """The symbols an account ever held, from the value of its ``held`` key. The list only
    ever grows (fills append to it), so a reader may remember it and read ahead."""
    return raw.decode().split("\n") if raw else []


def account_exposure(
    counters: Sequence[bytes | None], positions: Iterable[tuple[str, bytes | None]]
) -> AccountExposure:
    """Decode the values of ``Exposure.counter_keys`` and ``(symbol, position value)`` pairs;
    positions of 0 are left out."""
    cash_flow, reserved, open_orders = counters[0], counters[1], counters[2]
    held = {symbol: quantity(_int(raw)) for symbol, raw in positions if _int(raw)}
    return AccountExposure(_int(cash_flow), _int(reserved), _int(open_orders), held)


def _order_key(order_id: str) -> str:
    return f"risk:order:{order_id}"

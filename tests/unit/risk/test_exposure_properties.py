"""Properties of the exposure bookkeeping: whatever the interleaving of reserves, releases and
(redelivered) fills, the account counters equal the sums over the reservations still held,
and positions and cash equal the sums over distinct fills."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tradeloom.cache.memory import MemoryCache
from tradeloom.domain.orders import Side
from tradeloom.risk.exposure import (
    ApplyFill,
    Bound,
    Counter,
    Exposure,
    ExposureChange,
    ReleaseOrder,
)
from tradeloom.risk.units import MONEY_SCALE, QUANTITY_SCALE

ORDERS = [f"o{i}" for i in range(4)]
SYMBOLS = ["AAPL", "MSFT"]
CASH_LIMIT = 5_000 * MONEY_SCALE


@dataclass(frozen=True)
class Reserve:
    order_id: str
    symbol: str
    side: Side
    quantity: int
    price: int


@dataclass(frozen=True)
class Release:
    order_id: str


@dataclass(frozen=True)
class Fill:
    order_id: str
    number: int  # from a small pool, so fills get redelivered
    quantity: int
    price: int


order_ids = st.sampled_from(ORDERS)
sides = st.sampled_from([Side.BUY, Side.SELL])
operations = st.lists(
    st.one_of(
        st.builds(
            Reserve,
            order_ids,
            st.sampled_from(SYMBOLS),
            sides,
            st.integers(1, 20),
            st.integers(1, 200),
        ),
        st.builds(Release, order_ids),
        st.builds(Fill, order_ids, st.integers(0, 5), st.integers(1, 10), st.integers(1, 200)),
    ),
    max_size=40,
)
Step = Reserve | Release | Fill
FillTerms = tuple[str, Side, int, int]  # symbol, side, quantity, price


async def run(steps: list[Step], batched: bool) -> list[object]:
    """Apply ``steps``; with ``batched``, each run of fills and releases between two reserves
    goes as one ``Exposure.apply`` batch. Checks the invariants after every reserve and batch
    (or step) and returns the final state."""
    exposure = Exposure(MemoryCache())
    terms: dict[str, tuple[str, Side]] = {}  # order id -> (symbol, side) once reserved
    fills: dict[str, FillTerms] = {}
    pending: list[ExposureChange] = []
    buying_power = ((1, Counter.RESERVED), (-1, Counter.CASH_FLOW))

    async def flush() -> None:
        if pending:
            await exposure.apply(pending)
            pending.clear()
            await check(exposure, fills)

    for step in steps:
        if isinstance(step, Reserve):
            await flush()
            money = step.quantity * step.price * MONEY_SCALE if step.side is Side.BUY else 0
            bound = Bound(buying_power, money, CASH_LIMIT, "bp", "bp")
            outcome = await exposure.reserve(
                step.order_id,
                "A",
                step.symbol,
                step.side,
                step.quantity * QUANTITY_SCALE,
                money,
                [bound],
            )
            if outcome.status == 0:
                terms[step.order_id] = (step.symbol, step.side)
        elif isinstance(step, Release):
            if batched:
                pending.append(ReleaseOrder(step.order_id))
            else:
                await exposure.release(step.order_id)
        else:
            symbol, side = terms.get(step.order_id, ("AAPL", Side.BUY))
            fill_id = f"{step.order_id}-f{step.number}"
            quantity, price = Decimal(step.quantity), Decimal(step.price)
            if batched:
                pending.append(
                    ApplyFill("A", symbol, side, quantity, price, step.order_id, fill_id)
                )
            else:
                applied = await exposure.apply_fill(
                    "A", symbol, side, quantity, price, step.order_id, fill_id
                )
                assert applied == (fill_id not in fills), "a fill is applied exactly once"
            fills.setdefault(fill_id, (symbol, side, step.quantity, step.price))
        if not batched or isinstance(step, Reserve):
            await check(exposure, fills)
    await flush()
    return [
        await exposure.snapshot("A"),
        *[await exposure.symbol_counters("A", symbol) for symbol in SYMBOLS],
        *[await exposure.reservation(order_id) for order_id in ORDERS],
    ]


async def check(exposure: Exposure, fills: dict[str, FillTerms]) -> None:
    held = [r for r in [await exposure.reservation(o) for o in ORDERS] if r is not None]
    snapshot = await exposure.snapshot("A")
    assert snapshot.open_orders == len(held)
    assert snapshot.reserved_units == sum(r.reserved_units for r in held)
    for symbol in SYMBOLS:
        position, buying, selling = await exposure.symbol_counters("A", symbol)
        for side, counted in ((Side.BUY, buying), (Side.SELL, selling)):
            open_qty = sum(r.remaining for r in held if (r.symbol, r.side) == (symbol, side))
            assert counted == open_qty * QUANTITY_SCALE, f"open {side} {symbol}"
        signed = sum(q if s is Side.BUY else -q for sym, s, q, _ in fills.values() if sym == symbol)
        assert position == signed * QUANTITY_SCALE, f"position {symbol}"
    cash = sum(-q * p if s is Side.BUY else q * p for _, s, q, p in fills.values())
    assert snapshot.cash_flow_units == cash * MONEY_SCALE
    assert all(r.reserved_units >= 0 and r.remaining > 0 for r in held)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_counters_always_equal_the_sums_over_held_reservations(
    steps: list[Step],
) -> None:
    """One at a time and in batches: the invariants hold, and both end in the same state."""
    one_by_one = asyncio.run(run(steps, batched=False))
    assert asyncio.run(run(steps, batched=True)) == one_by_one

"""An independent reference for positions: plain Decimal arithmetic, fills folded in the order
of (filled_at, fill_id), and the hypothesis strategies the properties draw deliveries from.

The rule for a partial close follows the specification in domain/positions.py (release
``basis * closed / open`` of the cost basis, rounded half-even to 1e-12 only when the quotient
does not terminate); everything else is the textbook method written out longhand.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact

from hypothesis import strategies as st

from tradeloom.domain.orders import Side
from tradeloom.domain.positions import Fill

D = Decimal
ZERO = Decimal(0)
_WIDE = Context(prec=200)
BASE_TIME = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


@dataclass
class RefPosition:
    quantity: Decimal = ZERO
    basis: Decimal = ZERO
    realized: Decimal = ZERO
    fees: Decimal = ZERO
    fill_count: int = 0
    last_fill_id: str = ""


def _released(basis: Decimal, closed: Decimal, held: Decimal) -> Decimal:
    context = Context(prec=200)
    share = context.divide(context.multiply(basis, closed), held)
    if context.flags[Inexact]:
        return share.quantize(D("1e-12"), rounding=ROUND_HALF_EVEN)
    return share


def _apply(p: RefPosition, fill: Fill) -> None:
    signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
    if p.quantity == 0 or (p.quantity > 0) == (signed > 0):
        p.quantity, p.basis = p.quantity + signed, p.basis + signed * fill.price
    else:
        held = abs(p.quantity)
        closed = min(fill.quantity, held)
        released = p.basis if closed == held else _released(p.basis, closed, held)
        proceeds = closed * fill.price if p.quantity > 0 else -closed * fill.price
        p.realized += proceeds - released
        p.basis -= released
        p.quantity += signed
        if p.quantity == 0:
            p.basis = ZERO
        elif fill.quantity > held:
            p.basis = p.quantity * fill.price
    p.realized -= fill.fee
    p.fees += fill.fee
    p.fill_count += 1
    p.last_fill_id = fill.fill_id


def reference(
    fills: list[Fill],
) -> tuple[dict[tuple[str, str], RefPosition], dict[str, Decimal]]:
    """Positions and net cash flow per account of the distinct ``fills``."""
    positions: dict[tuple[str, str], RefPosition] = defaultdict(RefPosition)
    cash: dict[str, Decimal] = defaultdict(Decimal)
    with_distinct_ids = {f.fill_id: f for f in fills}.values()
    for fill in sorted(with_distinct_ids, key=lambda f: (f.filled_at, f.fill_id)):
        _apply(positions[(fill.account_id, fill.symbol)], fill)
        notional = _WIDE.multiply(fill.quantity, fill.price)
        paid = notional + fill.fee if fill.side is Side.BUY else -(notional - fill.fee)
        cash[fill.account_id] = _WIDE.subtract(cash[fill.account_id], paid)
    return dict(positions), dict(cash)


# -- strategies --------------------------------------------------------------------------------

quantities = st.one_of(
    st.integers(1, 6).map(lambda n: D(25 * n)),  # round lots: exact closes and flips to flat
    st.decimals(min_value=D("0.01"), max_value=D("200"), places=2),
)
prices = st.decimals(min_value=D("0.0001"), max_value=D("5000"), places=4)
fees = st.one_of(st.just(D(0)), st.decimals(min_value=D("-0.50"), max_value=D("9.99"), places=2))
# A few distinct times, so fills often share one and the fill id breaks the tie.
times = st.integers(0, 4).map(lambda minute: BASE_TIME + timedelta(minutes=minute))


@st.composite
def distinct_fills(
    draw: st.DrawFn, accounts: tuple[str, ...], symbols: tuple[str, ...], max_size: int = 25
) -> list[Fill]:
    terms = draw(
        st.lists(
            st.tuples(
                st.sampled_from(accounts),
                st.sampled_from(symbols),
                st.sampled_from(Side),
                quantities,
                prices,
                fees,
                times,
            ),
            max_size=max_size,
        )
    )
    # Ids in an order unrelated to the list, so ties by time are broken unpredictably.
    ids = draw(st.permutations(range(len(terms))))
    return [
        Fill(f"{account}-f{ids[i]:03d}", account, symbol, side, q, price, fee, filled_at=when)
        for i, (account, symbol, side, q, price, fee, when) in enumerate(terms)
    ]


@st.composite
def deliveries(draw: st.DrawFn, fills: list[Fill]) -> list[Fill]:
    """Every fill at least once, in any order, with redeliveries anywhere."""
    delivered = list(draw(st.permutations(fills)))
    if fills:
        extra = draw(st.lists(st.tuples(st.sampled_from(fills), st.integers(0, 10**6))))
        for fill, where in extra:
            delivered.insert(where % (len(delivered) + 1), fill)
    return delivered


@st.composite
def batches(draw: st.DrawFn, delivered: list[Fill]) -> list[list[Fill]]:
    """``delivered`` cut into consecutive batches of random sizes."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(delivered) - 1)), max_size=6)))
    bounds = [0, *(c for c in cuts if c < len(delivered)), len(delivered)]
    return [delivered[a:b] for a, b in itertools.pairwise(bounds) if a < b]

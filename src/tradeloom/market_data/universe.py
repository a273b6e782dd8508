"""The instruments the simulated exchange trades: a default universe, or one read from CSV.

The CSV has a header and the columns ``symbol,tick_size,lot_size,reference_price`` and an
optional ``venue`` (default ``SIMX``). Numbers are read as text, so they stay exact.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

from tradeloom.domain.market import Instrument

DEFAULT_VENUE = "SIMX"

_REFERENCE_PRICES = {
    "AAPL": "187.20",
    "MSFT": "415.50",
    "NVDA": "880.10",
    "AMZN": "178.30",
    "GOOGL": "152.40",
    "META": "495.60",
    "TSLA": "175.80",
    "BRK.B": "408.90",
    "JPM": "195.20",
    "V": "278.40",
    "UNH": "492.70",
    "XOM": "116.30",
    "JNJ": "152.80",
    "MA": "468.20",
    "PG": "161.50",
    "AVGO": "1310.00",
    "HD": "352.60",
    "CVX": "157.40",
    "LLY": "760.30",
    "MRK": "128.90",
    "ABBV": "170.20",
    "PEP": "168.70",
    "KO": "60.20",
    "COST": "725.40",
    "ADBE": "505.10",
    "WMT": "60.40",
    "BAC": "37.80",
    "CRM": "300.20",
    "TMO": "575.60",
    "MCD": "279.10",
    "CSCO": "49.60",
    "ACN": "345.80",
    "ABT": "113.70",
    "NFLX": "615.30",
    "AMD": "162.50",
    "LIN": "460.20",
    "ORCL": "125.60",
    "DIS": "112.40",
    "WFC": "57.30",
    "INTC": "35.10",
    "QCOM": "168.20",
    "TXN": "172.90",
    "VZ": "40.30",
    "CMCSA": "39.80",
    "PFE": "27.60",
    "NKE": "93.40",
    "IBM": "185.70",
    "GS": "415.20",
    "CAT": "340.60",
    "BA": "180.30",
}


def default_universe(venue: str = DEFAULT_VENUE) -> tuple[Instrument, ...]:
    """Fifty large US equities with cent ticks, single-share lots and a recent-looking price."""
    return tuple(
        Instrument(symbol, Decimal("0.01"), Decimal(1), Decimal(price), venue)
        for symbol, price in _REFERENCE_PRICES.items()
    )


def load_universe(path: Path) -> tuple[Instrument, ...]:
    """Read instruments from a CSV file; a bad row raises ``ValueError`` naming its line."""
    with path.open(newline="", encoding="utf-8") as handle:
        return parse_universe(handle, source=str(path))


def parse_universe(lines: Iterable[str], *, source: str = "<csv>") -> tuple[Instrument, ...]:
    instruments: list[Instrument] = []
    reader = csv.DictReader(lines)
    for row in reader:
        try:
            instruments.append(
                Instrument(
                    symbol=row["symbol"].strip(),
                    tick_size=Decimal(row["tick_size"].strip()),
                    lot_size=Decimal(row["lot_size"].strip()),
                    reference_price=Decimal(row["reference_price"].strip()),
                    venue=(row.get("venue") or DEFAULT_VENUE).strip(),
                )
            )
        except (KeyError, AttributeError, ArithmeticError, ValueError) as exc:
            raise ValueError(f"{source} line {reader.line_num}: {exc}") from exc
    if not instruments:
        raise ValueError(f"{source}: no instruments")
    return tuple(instruments)

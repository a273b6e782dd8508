"""Which partition an event key lands in, identically in every process and every adapter.

Python's ``hash()`` of a string is salted per process, so two publishers would disagree about
where a key goes and per-key order would break. CRC-32 of the key's UTF-8 bytes is stable
across processes, machines and Python versions, cheap, and spreads keys evenly enough for a
few hundred partitions.
"""

from __future__ import annotations

import zlib


def partition_of(key: str, partitions: int) -> int:
    """The partition (``0 <= p < partitions``) that carries every event published with ``key``."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return zlib.crc32(key.encode("utf-8")) % partitions

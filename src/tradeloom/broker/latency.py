"""A sliding window of broker latencies and its p95: what the gateway's timeout adapts to."""

from __future__ import annotations

import math
from collections import deque


class LatencyWindow:
    """The last ``size`` latencies in seconds. ``p95`` is None below ``min_samples``, so a
    single slow answer right after start does not switch the gateway to its slow timeout."""

    def __init__(self, size: int = 200, *, min_samples: int = 10) -> None:
        if size < 1 or min_samples < 1:
            raise ValueError("size and min_samples must be at least 1")
        self._samples: deque[float] = deque(maxlen=size)
        self._min_samples = min_samples

    def add(self, seconds: float) -> None:
        self._samples.append(max(seconds, 0.0))

    def __len__(self) -> int:
        return len(self._samples)

    def p95(self) -> float | None:
        """The nearest-rank 95th percentile of the window."""
        if len(self._samples) < self._min_samples:
            return None
        ordered = sorted(self._samples)
        rank = math.ceil(0.95 * len(ordered))
        return ordered[rank - 1]

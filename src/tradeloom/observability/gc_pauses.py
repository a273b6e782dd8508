"""How long the garbage collector stops the process, per generation, as a Prometheus histogram.

A collection runs on whatever thread allocates, inside the event loop's callbacks, so while it
runs nothing else does: every request, stream write and consumer of the process waits. In a
process holding thousands of SSE streams a young collection scans every stream woken since the
last one, and a middle one everything promoted since its last: measured at 15,000 streams,
tens of milliseconds and over a second. Those pauses made the latency tails, and nothing else
shows them: an operator reads ``tradeloom_gc_pause_seconds`` next to the latency metrics.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GcPauses:
    """Times each collection into ``tradeloom_gc_pause_seconds{generation}`` while installed.

    ``gc.callbacks`` is process-wide: install it once per long-running process (the web app's
    lifespan does) and uninstall it on the way out. The callback allocates nothing per
    collection beyond what observing a histogram does.
    """

    def __init__(self, registry: CollectorRegistry, *, clock: Any = time.perf_counter) -> None:
        histogram = Histogram(
            "tradeloom_gc_pause_seconds",
            "Garbage collector pauses of this process, by generation collected",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
            registry=registry,
        )
        self._by_generation = tuple(histogram.labels(str(g)) for g in range(3))
        self._clock = clock
        self._started = 0.0

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
        else:
            self._by_generation[info["generation"]].observe(self._clock() - self._started)

"""The collector's pauses reach /metrics, by generation, only while installed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from tradeloom.observability.gc_pauses import GcPauses


def ticking(step: float) -> Iterator[float]:
    now = 0.0
    while True:
        yield now
        now += step


def pauses(registry: CollectorRegistry, generation: int) -> tuple[float, float]:
    labels = {"generation": str(generation)}
    count = registry.get_sample_value("tradeloom_gc_pause_seconds_count", labels)
    total = registry.get_sample_value("tradeloom_gc_pause_seconds_sum", labels)
    return count or 0.0, total or 0.0


def test_each_collection_is_timed_under_its_generation() -> None:
    registry = CollectorRegistry()
    clock = ticking(0.25)  # every reading 250 ms after the one before: start/stop = 250 ms
    gc_pauses = GcPauses(registry, clock=lambda: next(clock))
    gc_pauses.install()
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        gc_pauses.uninstall()
    count, total = pauses(registry, 2)
    assert count >= 1
    assert total == count * 0.25
    assert pauses(registry, 0)[0] >= 1


def test_nothing_is_observed_once_uninstalled_and_installing_twice_counts_once() -> None:
    registry = CollectorRegistry()
    gc_pauses = GcPauses(registry)
    gc_pauses.install()
    gc_pauses.install()
    gc.collect(1)
    gc_pauses.uninstall()
    assert pauses(registry, 1)[0] == 1
    gc.collect(1)
    assert pauses(registry, 1)[0] == 1

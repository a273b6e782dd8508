"""settle_heap, in a process of its own (what it freezes is never freed)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from tradeloom.bootstrap import GC_THRESHOLDS, settle_heap
settle_heap()
print(gc.get_freeze_count() > 0, gc.get_threshold() == GC_THRESHOLDS)
"""


def test_a_settled_process_freezes_its_start_up_heap_and_collects_young_objects_rarely() -> None:
    run = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.split() == ["True", "True"], run.stderr

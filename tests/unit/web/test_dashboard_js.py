"""The dashboard's JavaScript logic (tests/js/, node's own test runner) as part of the suite.

Node is on every machine that builds the dashboard (``npm ci``); without it the test is
skipped locally and fails in CI, as a missing server does in tests/servers.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers import IN_CI

ROOT = Path(__file__).resolve().parents[3]


def test_the_dashboard_logic_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        if IN_CI:
            pytest.fail("node is not installed: the dashboard's tests/js cannot run")
        pytest.skip("node is not installed")
    run = subprocess.run(
        [node, "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, f"node --test tests/js/ failed:\n{run.stdout}\n{run.stderr}"

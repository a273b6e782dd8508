"""README command 1 in miniature: `tradeloom serve` on the embedded default, from nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADELOOM_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tradeloom.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"tradeloom serve exited with {process.returncode}:\n{output}")
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("tradeloom serve did not answer /healthz within 30 s")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_serve_answers_health_and_readiness_with_no_servers(served: str, tmp_path: Path) -> None:
    assert httpx.get(f"{served}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["backends"] == ["archive", "bus", "cache", "database"]
    assert (tmp_path / "var" / "tradeloom.db").exists()

"""README command 1 in a browser: ``tradeloom demo`` serves the dashboard, and a trader uses it.

The demo runs in a subprocess on a free port, with its SQLite database in a temporary folder
and a fast simulated market; the system Chromium (the Debian ``chromium`` package, never a
browser that Playwright downloads) is driven headless through Playwright. Each step saves a
screenshot under ``test-artifacts/dashboard/`` (the path is printed) so a failure can be seen.

Without /usr/bin/chromium the test is skipped locally and fails in CI (``CI=true``), as a
missing server does in tests/servers.py.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import IN_CI

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:
    if IN_CI:
        raise
    pytest.skip("playwright is not installed: pip install -e '.[dev]'", allow_module_level=True)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHART_LIBRARY = ROOT / "src/tradeloom/web/static/vendor/lightweight-charts.standalone.production.js"
STARTUP_SECONDS = 30
STEP_MS = 15_000
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    message = (
        f"{CHROMIUM} is missing: install the system browser with "
        "`apt-get install -y --no-install-recommends chromium`"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tradeloom demo`` on a free port, in a temporary folder (so its SQLite file is there),
    with cheap password hashing and a fast market; one for the tests of this module."""
    tmp_path = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADELOOM_")}
    env.update(
        TRADELOOM_PASSWORD_TIME_COST="1",
        TRADELOOM_PASSWORD_MEMORY_COST="1024",
        TRADELOOM_PASSWORD_PARALLELISM="1",
    )
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tradeloom.cli", "demo", "--port", str(port), "--rate", "500"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"tradeloom demo exited with {process.returncode}:\n{log_path.read_text()}"
                )
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"tradeloom demo not ready in {STARTUP_SECONDS} s:\n{log_path.read_text()}"
                )
            time.sleep(0.1)
        assert "alice" in log_path.read_text(), "the demo did not print its users"
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"tradeloom demo did not stop on SIGTERM:\n{log_path.read_text()}")


@pytest.fixture
def page() -> Iterator[Page]:
    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            browser_page = context.new_page()
            browser_page.set_default_timeout(STEP_MS)
            expect.set_options(timeout=STEP_MS)
            yield browser_page
        finally:
            browser.close()


class Steps:
    """Numbered screenshots of the steps of one test, in a folder of its own."""

    def __init__(self, page: Page, test: str) -> None:
        self.page = page
        self.folder = ARTIFACTS / test
        self.count = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.png"):
            old.unlink()
        print(f"\ndashboard screenshots: {self.folder}")

    def shot(self, name: str) -> None:
        self.count += 1
        self.page.screenshot(path=self.folder / f"{self.count:02d}-{name}.png", full_page=True)


def sign_in(page: Page, base: str, username: str, steps: Steps) -> None:
    page.goto(base)
    expect(page.locator("#login-view")).to_be_visible()
    steps.shot("login")
    page.fill("#login-username", username)
    page.fill("#login-password", "demo-password")
    page.click("#login-submit")
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#user-name")).to_have_text(username)
    expect(page.locator("#connection")).to_have_text("live")


def place_order(page: Page, *, side: str, qty: str, order_type: str, **prices: str) -> None:
    page.check(f'#ticket input[name="side"][value="{side}"]')
    page.fill("#ticket-qty", qty)
    page.select_option("#ticket-type", order_type)
    for field, value in prices.items():
        page.fill(f"#ticket-{field}", value)
    page.click("#ticket-submit")


def placed_order_id(page: Page) -> str:
    result = page.locator("#ticket-result.ok[data-order-id]")
    expect(result).to_be_visible()
    order_id = result.get_attribute("data-order-id")
    assert order_id, "the ticket shows no order id"
    return order_id


def test_a_trader_watches_prices_trades_and_sees_the_position(demo_url: str, page: Page) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    steps = Steps(page, "trading")
    sign_in(page, demo_url, "alice", steps)
    expect(page.locator("#account-cash")).to_have_text("100,000.00")

    # Prices arrive and move.
    aapl = page.locator('#watchlist tr[data-symbol="AAPL"]')
    expect(aapl.locator("td.bid")).to_have_text(NUMBER)
    expect(aapl.locator("td.last")).to_have_text(NUMBER)
    before = page.inner_text("#watchlist tbody")
    page.wait_for_function(
        "before => document.querySelector('#watchlist tbody').innerText !== before", arg=before
    )
    steps.shot("prices")

    # A symbol added to the watchlist joins the stream (a new connection, then its prices).
    page.select_option("#watch-symbol", "XOM")
    page.click("#watch-add button")
    xom = page.locator('#watchlist tr[data-symbol="XOM"]')
    expect(xom).to_be_visible()
    page.wait_for_function(
        """() => [...document.querySelectorAll('#watchlist tr[data-symbol="XOM"] td.num')]
                 .some(cell => /\\d/.test(cell.textContent))"""
    )
    before = page.inner_text("#watchlist tbody")
    page.wait_for_function(
        "before => document.querySelector('#watchlist tbody').innerText !== before", arg=before
    )

    # The chart follows the selected symbol (when the assets are built, as CI must have).
    aapl.click()
    expect(page.locator("#chart-symbol")).to_have_text("AAPL")
    if CHART_LIBRARY.is_file():
        expect(page.locator("#chart canvas").first).to_be_visible()
    elif IN_CI:
        pytest.fail(f"{CHART_LIBRARY} is missing: npm ci && python scripts/build_assets.py")

    # A limit far below the market rests: accepted, amended smaller, then canceled.
    page.click('#blotter-filter button[data-filter="all"]')
    page.select_option("#ticket-tif", "gtc")
    place_order(page, side="buy", qty="3", order_type="limit", limit="50.00")
    limit_id = placed_order_id(page)
    resting = page.locator(f'#blotter tr[data-order-id="{limit_id}"]')
    expect(resting).to_have_attribute("data-status", "accepted")
    expect(resting.locator('td[data-col="limit"]')).to_have_text("50.00")
    steps.shot("limit-accepted")

    resting.locator('button[data-action="amend"]').click()
    resting.locator('form.amend input[name="qty"]').fill("2")
    resting.locator('form.amend button[data-action="save"]').click()
    expect(resting.locator('td[data-col="qty"]')).to_have_text("2")
    expect(resting).to_have_attribute("data-status", "accepted")
    steps.shot("limit-amended")

    resting.locator('button[data-action="cancel"]').click()
    expect(resting).to_have_attribute("data-status", "canceled")
    steps.shot("limit-canceled")

    # An order too large for the risk limits is refused, and the ticket says why.
    page.select_option("#ticket-tif", "day")
    place_order(page, side="buy", qty="100000", order_type="market")
    refusal = page.locator("#ticket-result.error")
    expect(refusal).to_have_attribute("data-code", "risk.max_order_notional")
    expect(refusal).to_contain_text("Rejected by risk check")
    steps.shot("risk-rejected")

    # A market order fills, and the position appears with live P&L.
    place_order(page, side="buy", qty="5", order_type="market")
    market_id = placed_order_id(page)
    filled = page.locator(f'#blotter tr[data-order-id="{market_id}"]')
    expect(filled).to_have_attribute("data-status", "filled")
    expect(filled.locator('td[data-col="filled"]')).to_have_text("5")
    expect(filled.locator('td[data-col="avg"]')).to_have_text(NUMBER)
    steps.shot("market-filled")

    position = page.locator('#positions tr[data-symbol="AAPL"]')
    expect(position.locator("td.qty")).to_have_text("5")
    expect(position.locator("td.mark")).to_have_text(NUMBER)
    expect(position.locator("td.unrealized")).to_have_text(NUMBER)
    expect(page.locator("#account-cash")).not_to_have_text("100,000.00")
    expect(page.locator("#account-equity")).to_have_text(NUMBER)
    steps.shot("position")

    assert not errors, f"the page raised: {errors}"


def test_without_the_chart_library_the_dashboard_says_so_and_still_streams(
    demo_url: str, page: Page
) -> None:
    page.route("**/static/vendor/**", lambda route: route.fulfill(status=404, body="not built"))
    steps = Steps(page, "no-chart-library")
    sign_in(page, demo_url, "bob", steps)

    expect(page.locator("#chart-notice")).to_contain_text("chart library is not installed")
    expect(page.locator("#chart")).to_be_hidden()
    expect(page.locator('#watchlist tr[data-symbol="AAPL"] td.bid')).to_have_text(NUMBER)
    steps.shot("notice")

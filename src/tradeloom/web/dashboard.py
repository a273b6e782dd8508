"""The live trading dashboard: a static page and its ES modules, served by the app itself.

``/`` is the page (login, then watchlist, chart, ticket, blotter, positions); ``/static/`` holds
its script, style and the vendored chart library that ``scripts/build_assets.py`` copies from
npm (git-ignored; without it the page says so and works without the chart). Nothing is loaded
from another origin: the page's Content-Security-Policy allows this origin only, so the
dashboard works offline and an injected script from elsewhere cannot run.

The page is a route and the files a mount under ``/static``, so neither shadows an API path
whatever order routes are added in (a mount at ``/`` would answer every unknown path).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        # the chart library sizes its canvases through style attributes
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def install_dashboard(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serve the dashboard page at ``/`` and its files under ``/static/``."""
    page = static_dir / "index.html"

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(page, media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=static_dir), name="static")

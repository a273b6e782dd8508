"""The ASGI application.

``create_app`` takes a built :class:`~tradeloom.bootstrap.Platform`; the app's lifespan starts
it and closes it, so one process serves HTTP exactly while its backends are connected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import tradeloom
from tradeloom.bootstrap import Platform
from tradeloom.web.health import health_router


def create_app(platform: Platform) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        try:
            yield
        finally:
            await platform.close()

    app = FastAPI(
        title="Tradeloom",
        version=tradeloom.__version__,
        description="Multi-user algorithmic trading: orders, risk, positions and live streams.",
        lifespan=lifespan,
    )
    app.state.platform = platform
    app.include_router(health_router(platform.readiness_checks()))

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest(platform.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app

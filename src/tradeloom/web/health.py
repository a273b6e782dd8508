"""Liveness and readiness.

``/healthz`` answers 200 while the process serves HTTP at all. ``/readyz`` pings every backend
the platform is configured with and answers 503 naming each one that is down, so a load
balancer stops sending traffic to a process that could only fail requests (fail closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter
from fastapi.responses import JSONResponse

ReadinessCheck = Callable[[], Awaitable[None]]

READINESS_TIMEOUT = 2.0


async def check_backends(
    checks: Mapping[str, ReadinessCheck], within: float = READINESS_TIMEOUT
) -> dict[str, str]:
    """Run every check concurrently; return ``{backend: reason}`` for each one that failed."""

    async def run(check: ReadinessCheck) -> str | None:
        try:
            await asyncio.wait_for(check(), within)
        except TimeoutError:
            return f"no answer within {within:g} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None

    names = list(checks)
    results = await asyncio.gather(*(run(checks[name]) for name in names))
    return {name: reason for name, reason in zip(names, results, strict=True) if reason}


def health_router(
    checks: Mapping[str, ReadinessCheck], timeout: float = READINESS_TIMEOUT
) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"], response_model=None)
    async def readyz() -> JSONResponse:
        down = await check_backends(checks, timeout)
        if down:
            return JSONResponse(
                status_code=503,
                content={
                    "status": "unavailable",
                    "down": down,
                    "error": {
                        "code": "backend_unavailable",
                        "message": "unavailable: " + ", ".join(sorted(down)),
                        "details": down,
                    },
                },
            )
        return JSONResponse({"status": "ready", "backends": sorted(checks)})

    return router

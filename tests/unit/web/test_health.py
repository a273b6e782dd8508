"""Readiness names every backend that is down; liveness does not care."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from tradeloom.web.health import ReadinessCheck, health_router


async def healthy() -> None:
    return None


async def refused() -> None:
    raise ConnectionRefusedError("connection refused")


async def hangs() -> None:
    await asyncio.sleep(3600)


def client_for(**checks: ReadinessCheck) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(health_router(checks, timeout=0.05))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_ready_when_every_backend_answers() -> None:
    async with client_for(database=healthy, bus=healthy, cache=healthy) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "backends": ["bus", "cache", "database"]}


async def test_not_ready_names_each_backend_that_is_down() -> None:
    async with client_for(database=healthy, bus=hangs, cache=refused) as client:
        response = await client.get("/readyz")
        live = await client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert set(body["down"]) == {"bus", "cache"}
    assert "connection refused" in body["down"]["cache"]
    assert "no answer" in body["down"]["bus"]
    assert body["error"]["code"] == "backend_unavailable"
    assert live.status_code == 200

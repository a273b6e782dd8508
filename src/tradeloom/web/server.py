"""Serving the app with uvicorn, for ``tradeloom serve`` and ``tradeloom demo``.

Open SSE streams never end by themselves, and uvicorn's graceful shutdown waits for every
connection to close. So on Ctrl-C or SIGTERM the hub's streams are ended at once (their
responses finish, the browsers reconnect elsewhere or later), and whatever is still open after
``grace`` seconds is cut.
"""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn
from fastapi import FastAPI

from tradeloom.web.trading import TradingServices

GRACE_SECONDS = 2


class _StreamEndingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, trading: TradingServices) -> None:
        super().__init__(config)
        self._trading = trading

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # A signal handler may run between any two bytecodes: hand the work to the loop.
        loop.call_soon_threadsafe(self._trading.hub.close_streams)


def serve(application: FastAPI, host: str, port: int, *, grace: float = GRACE_SECONDS) -> None:
    """Serve ``application`` (built by ``create_app``) until interrupted."""
    trading = application.state.trading
    config = uvicorn.Config(
        application,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(grace),
    )
    _StreamEndingServer(config, trading).run()

"""``/api/stream``: one Server-Sent Events stream per browser tab or algorithm.

What a client receives, in this order:

1. ``event: snapshot``: the requested symbols' quotes, the open orders, the positions and the
   account, read after the stream subscribed to everything, so nothing published from then on
   is missed (an event may also be reflected in the snapshot already: apply events as states,
   not as increments).
2. From then on, as they happen: ``event: quote`` (conflated per symbol, at most
   ``TRADELOOM_STREAM_QUOTES_PER_SECOND``, latest wins) and the caller's own order and position
   events, each with ``id:`` (increasing per user) and ``event:`` its type.
   ``event: reset`` means "reload your snapshot over REST": the events between your
   ``Last-Event-ID`` and now are no longer buffered.
3. ``: heartbeat`` comments after 15 s of silence.

A reconnect with ``Last-Event-ID`` (browsers send it by themselves) resumes the user events
without a gap. A client too slow to take its user events has its stream closed rather than an
event dropped; it reconnects and resumes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
import msgspec
import structlog
from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from tradeloom.notifications import Reset, UserStream, parse_last_event_id, sse_frame
from tradeloom.notifications.replay_buffer import CAPACITY as REPLAY_CAPACITY
from tradeloom.notifications.stream import StreamItem
from tradeloom.positions.queries import PositionQueries
from tradeloom.web.auth import AuthenticatedUser, rate_limit
from tradeloom.web.json import json_object
from tradeloom.web.routes.market import parse_symbols, quote_json
from tradeloom.web.routes.orders import order_json
from tradeloom.web.routes.portfolio import Positions, account_json, position_json
from tradeloom.web.sse import ClientStream
from tradeloom.web.sse import sse_frame as frame
from tradeloom.web.trading import Trading, TradingServices

log = structlog.get_logger("tradeloom.web.stream")

Reader = Annotated[AuthenticatedUser, Depends(rate_limit("reads"))]
SNAPSHOT_ORDERS = 200
_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def snapshot(
    owner: str, symbols: list[str], trading: TradingServices, positions: PositionQueries
) -> bytes:
    """The snapshot frame: quotes, open orders, positions and the account, as JSON."""
    account = await trading.account_for(owner, None)
    quotes = await trading.last_prices.last_many(symbols) if symbols else {}
    orders = await trading.order_queries.list(owner, status="open", limit=SNAPSHOT_ORDERS)
    views = await positions.positions(owner, account)
    body: dict[str, Any] = {
        "quotes": {s: None if q is None else quote_json(q) for s, q in quotes.items()},
        "orders": [order_json(view) for view in orders.items],
        "positions": [position_json(view) for view in views],
        "account": account_json(await positions.account_summary(owner, account, views)),
    }
    return frame(msgspec.json.encode(json_object(body)), event="snapshot")


def user_event_frames(client: ClientStream, *, resumed: bool) -> Callable[[StreamItem], None]:
    """What puts the user's events into the client's outbox, as the user stream delivers them.

    A new stream (not ``resumed``) starts with a Reset that only tells the current id: the
    snapshot is already current, so it goes out as a bare ``id:`` line, which sets the
    browser's Last-Event-ID without an event to handle."""
    first = not resumed

    def deliver(item: StreamItem) -> None:
        nonlocal first
        if first and isinstance(item, Reset):
            client.offer_user_frame(b"id: %d\n\n" % item.current)
        else:
            client.offer_user_frame(sse_frame(item).encode())
        first = False

    return deliver


class EventStreamResponse(Response):
    """The response of one stream: writes the client's outbox until it closes, then runs
    ``finish`` (always, and shielded from cancellation so a stream never leaks).

    Leaner than Starlette's ``StreamingResponse`` on purpose: no async generator between the
    outbox and the socket, and no task group per response. A stream waits on one future and
    a second task waits for the client to hang up (that closes the outbox), which is all a
    waiting stream holds; at 15,000 streams every object per wake-up is felt by the loop and
    the garbage collector.
    """

    media_type = "text/event-stream"

    def __init__(self, client: ClientStream, finish: Callable[[], Awaitable[None]]) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(_HEADERS)
        self._client = client
        self._finish = finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self._client
        hangup = asyncio.ensure_future(_hung_up(receive))
        hangup.add_done_callback(functools.partial(_close_on_hangup, client))
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            await client.write_to(send)
            if not _hung_up_cleanly(hangup):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            hangup.cancel()
            # A cancelled response (server shutdown) must still unsubscribe. The finish runs
            # as a task of its own: a native cancel of this one (uvicorn's shutdown timeout)
            # stops the wait, never the finish; the anyio scope covers anyio's cancellation.
            finishing = asyncio.ensure_future(self._finish())
            with anyio.CancelScope(shield=True):
                await asyncio.shield(finishing)


def _close_on_hangup(client: ClientStream, hangup: asyncio.Future[None]) -> None:
    client.close()
    if not hangup.cancelled() and hangup.exception() is not None:
        log.warning("web.stream_receive_failed", owner=client.owner, error=repr(hangup.exception()))


def _hung_up_cleanly(hangup: asyncio.Future[None]) -> bool:
    return hangup.done() and not hangup.cancelled() and hangup.exception() is None


async def _hung_up(receive: Receive) -> None:
    """Returns once the client has gone (uvicorn then answers ``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def stream_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["stream"])

    @router.get(
        "/stream",
        response_class=EventStreamResponse,
        status_code=200,
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE"}},
    )
    async def stream(
        user: Reader,
        trading: Trading,
        positions: Positions,
        symbols: Annotated[str | None, Query(max_length=2000, examples=["AAPL,MSFT"])] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> EventStreamResponse:
        """Live quotes of ``symbols`` and your own order and position events (see above)."""
        names = parse_symbols(trading, symbols) if symbols else []
        # Room for a whole replay (a resume may bring up to the buffer's capacity at once)
        # and live events on top: a resume must never overflow before it has caught up.
        client = ClientStream(user.username, names, max_user_events=2 * REPLAY_CAPACITY)
        resume_after = parse_last_event_id(last_event_id)
        await trading.hub.open(client)
        events: UserStream | None = None
        try:
            events = await trading.user_streams.stream_from(
                user.username,
                resume_after,
                user_event_frames(client, resumed=resume_after is not None),
                on_end=client.close,
            )
            client.start_with([await snapshot(user.username, names, trading, positions)])
        except BaseException:
            if events is not None:
                await events.close()
            await trading.hub.close(client)
            raise

        async def finish() -> None:
            assert events is not None
            try:
                await events.close()
            finally:
                await trading.hub.close(client)

        return EventStreamResponse(client, finish)

    return router

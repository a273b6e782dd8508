"""ContinuousPull: one pull request kept open, renewed only when it ends (fake connection).

The real server is exercised by the bus contract suite; these pin the request discipline that
makes a trickle cheap, which a working consumer would not show.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from tradeloom.messaging.nats_pull import ContinuousPull


class Connection:
    """Records pull requests; the test delivers messages and status replies by hand, on the
    reply subject of the request they answer (the latest one unless told)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[str] = []
        self.callback: Any = None
        self.unsubscribed = False
        self.in_flight: list[Any] = []  # sent by the server before it saw the unsubscribe

    def new_inbox(self) -> str:
        return "_INBOX.pull"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        assert subject == "_INBOX.pull.*"
        self.callback = cb

        async def unsubscribe() -> None:
            self.unsubscribed = True

        async def drain() -> None:  # unsubscribe, a round trip, then what was in flight
            self.unsubscribed = True
            for message in self.in_flight:
                await cb(message)

        return SimpleNamespace(unsubscribe=unsubscribe, drain=drain)

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        assert subject == "$JS.API.CONSUMER.MSG.NEXT.S.g_0"
        assert reply.startswith("_INBOX.pull.")
        assert reply not in self.replies, "each request has a reply subject of its own"
        self.requests.append(json.loads(payload))
        self.replies.append(reply)

    async def deliver(self, label: str) -> None:
        """A message as JetStream sends it: on its stream subject, whichever request it is for."""
        message = SimpleNamespace(subject="tl.order_events.0", data=label.encode(), headers={})
        await self.callback(message)

    async def status(self, code: str, request: int = -1) -> None:
        message = SimpleNamespace(subject=self.replies[request], data=b"", headers={"Status": code})
        await self.callback(message)


def labels(messages: list[Any]) -> list[str]:
    return [message.data.decode() for message in messages]


async def opened(batch: int = 10, expires: float = 5.0) -> tuple[Connection, ContinuousPull]:
    nc = Connection()
    pull = ContinuousPull(nc, "S", "g_0", batch=batch, expires=expires)  # type: ignore[arg-type]
    await pull.open()
    return nc, pull


async def test_one_open_request_brings_messages_as_they_come() -> None:
    nc, pull = await opened()
    for label in ("a", "b", "c"):
        taking = asyncio.create_task(pull.take(10, wait=1.0, linger=0.0))
        await asyncio.sleep(0)
        await nc.deliver(label)
        assert labels(await taking) == [label]
    assert nc.requests == [{"batch": 10, "expires": 5_000_000_000}]


async def test_a_fulfilled_request_is_renewed() -> None:
    nc, pull = await opened(batch=2)
    taking = asyncio.create_task(pull.take(2, wait=1.0, linger=0.0))
    await asyncio.sleep(0)
    await nc.deliver("a")
    await nc.deliver("b")
    assert labels(await taking) == ["a", "b"]
    assert len(nc.requests) == 2  # the first owes nothing more: the next went out at once


async def test_a_request_the_server_ended_is_renewed() -> None:
    nc, pull = await opened()
    taking = asyncio.create_task(pull.take(10, wait=1.0, linger=0.0))
    await asyncio.sleep(0)
    await nc.status("408")  # expired with nothing to bring
    assert await taking == []
    assert len(nc.requests) == 2


async def test_after_a_refusal_the_next_request_waits_a_moment() -> None:
    nc, pull = await opened()
    taking = asyncio.create_task(pull.take(10, wait=0.05, linger=0.0))
    await asyncio.sleep(0)
    await nc.status("409")  # e.g. a leadership change: asking again at once may spin
    assert await taking == []
    assert len(nc.requests) == 1
    await asyncio.sleep(0.15)
    assert await pull.take(10, wait=0.0, linger=0.0) == []
    assert len(nc.requests) == 2


async def test_a_request_is_renewed_before_it_expires_and_its_late_end_ends_nothing() -> None:
    nc, pull = await opened(expires=0.1)
    assert await pull.take(10, wait=0.05, linger=0.0) == []
    assert len(nc.requests) == 1  # still open at half its life
    assert await pull.take(10, wait=0.06, linger=0.0) == []
    assert len(nc.requests) == 2  # renewed at 90 % of its life, silent or not
    await nc.status("408", request=0)  # the first one's end, arriving late
    await nc.deliver("a")  # and a message it brought just before: still good
    assert labels(await pull.take(10, wait=0.0, linger=0.0)) == ["a"]
    assert len(nc.requests) == 2


async def test_a_batch_lingers_for_more_until_full() -> None:
    nc, pull = await opened()
    taking = asyncio.create_task(pull.take(3, wait=1.0, linger=1.0))
    await asyncio.sleep(0)
    for label in ("a", "b", "c", "d"):
        await nc.deliver(label)
    assert labels(await taking) == ["a", "b", "c"]
    assert labels(await pull.take(3, wait=0.0, linger=0.0)) == ["d"]


async def test_closing_with_drain_returns_what_the_server_sent_before_the_unsubscribe() -> None:
    nc, pull = await opened()
    await pull.take(10, wait=0.0, linger=0.0)  # the request is out
    nc.in_flight.append(SimpleNamespace(subject="tl.order_events.0", data=b"late", headers={}))
    assert labels(await pull.close(drain=True)) == ["late"]
    assert nc.unsubscribed
    assert len(nc.requests) == 1  # nothing asked for after closing began
    assert await pull.close(drain=True) == []  # idempotent


async def test_a_request_that_cannot_be_sent_is_asked_again_after_a_backoff() -> None:
    nc, pull = await opened()
    sent = nc.publish
    failures = [ConnectionError("reconnecting, buffer full")]

    async def flaky(subject: str, payload: bytes = b"", reply: str = "") -> None:
        if failures:
            raise failures.pop()
        await sent(subject, payload, reply)

    nc.publish = flaky  # type: ignore[method-assign]
    assert await pull.take(10, wait=0.3, linger=0.0) == []
    assert len(nc.requests) == 1  # the failed one was not counted as sent; a later one was


async def test_an_interrupted_take_returns_at_once() -> None:
    _, pull = await opened()
    taking = asyncio.create_task(pull.take(10, wait=30.0, linger=0.0))
    await asyncio.sleep(0)
    pull.interrupt()
    async with asyncio.timeout(1):
        assert await taking == []

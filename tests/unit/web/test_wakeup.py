"""Wakeup: an Event for one waiter, without the Event's deque of waiters."""

from __future__ import annotations

import asyncio

import pytest

from tradeloom.web.wakeup import Wakeup


async def test_a_wait_returns_at_once_while_set_and_blocks_once_cleared() -> None:
    wakeup = Wakeup()
    wakeup.set()
    await asyncio.wait_for(wakeup.wait(), timeout=1)
    wakeup.clear()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(wakeup.wait(), timeout=0.02)


async def test_set_wakes_the_waiter_and_many_sets_are_one() -> None:
    wakeup = Wakeup()
    waiter = asyncio.ensure_future(wakeup.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    wakeup.set()
    wakeup.set()
    await asyncio.wait_for(waiter, timeout=1)
    assert wakeup.is_set()


async def test_a_cancelled_wait_leaves_it_usable() -> None:
    wakeup = Wakeup()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await wakeup.wait()
    waiter = asyncio.ensure_future(wakeup.wait())
    await asyncio.sleep(0)
    wakeup.set()
    await asyncio.wait_for(waiter, timeout=1)


async def test_a_second_concurrent_waiter_is_refused() -> None:
    wakeup = Wakeup()
    first = asyncio.ensure_future(wakeup.wait())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one waiter"):
        await wakeup.wait()
    wakeup.set()
    await first


async def test_a_wait_is_the_future_itself_not_a_coroutine_around_it() -> None:
    # A waiting stream should hold as few objects as possible (each is scanned by the
    # collector): the waiter is one future, resolved by set().
    wakeup = Wakeup()
    waiter = wakeup.wait()
    assert isinstance(waiter, asyncio.Future)
    wakeup.set()
    assert waiter.done()

"""The agent's event queue alone."""

from __future__ import annotations

import asyncio

import pytest

from stubdom.stubdomain.eventqueue import EventQueue


async def test_items_come_out_in_order_and_a_get_waits_for_the_next() -> None:
    q: EventQueue[int] = EventQueue()
    q.put_nowait(1)
    q.put_nowait(2)
    assert await q.get() == 1
    assert await q.get() == 2
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put_nowait(3)
    assert await asyncio.wait_for(getter, 5) == 3


async def test_a_cancelled_get_loses_no_item() -> None:
    q: EventQueue[str] = EventQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    q.put_nowait("kept")
    assert await asyncio.wait_for(q.get(), 5) == "kept"


def test_items_put_before_the_loop_runs_are_kept() -> None:
    q: EventQueue[str] = EventQueue()
    q.put_nowait("early")  # the signal handlers and the reader need no running loop here
    assert asyncio.run(q.get()) == "early"

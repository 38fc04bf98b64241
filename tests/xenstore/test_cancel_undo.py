"""A request cancelled after it was sent may still take effect on the server: a WATCH
or a TRANSACTION_START given up on must not hold one of the connection's watches or
transactions until it closes (a save every few seconds ran a stubdomain into E2BIG)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from stubdom.xenstore import Client
from tests.xenstore.conftest import Xs


async def cancelled_in_flight(aw: Awaitable[object]) -> None:
    """Run ``aw`` until its request is on the wire, then cancel it."""
    task = asyncio.ensure_future(aw)
    await asyncio.sleep(0)  # the request is written before the first suspension
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def settled(client: Client) -> None:
    """A round trip after everything sent before it: the undo has been served too."""
    await client.read_text("/")


async def test_a_cancelled_watch_start_leaves_no_watch(xs: Xs) -> None:
    for _ in range(5):
        await cancelled_in_flight(xs.waiter.watch("/a").start())
    await settled(xs.waiter)
    assert xs.server_watches() == 0


async def test_a_cancelled_watch_start_frees_its_token(xs: Xs) -> None:
    await cancelled_in_flight(xs.waiter.watch("/a", "tok").start())
    async with xs.waiter.watch("/a", "tok") as w:
        first = await w.get(10.0)
        assert first.path == "/a"
        assert xs.server_watches() == 1
    assert xs.server_watches() == 0


async def test_a_cancelled_transaction_start_leaves_no_transaction(xs: Xs) -> None:
    for _ in range(5):
        await cancelled_in_flight(xs.waiter.transaction_start())
    for _ in range(100):  # the abort follows the start's reply
        await settled(xs.waiter)
        if xs.server_transactions() == 0:
            break
    assert xs.server_transactions() == 0
    tx = await xs.waiter.transaction_start()  # and the connection can still start one
    await xs.waiter.transaction_end(tx, commit=False)



async def test_a_transaction_start_cancelled_as_its_reply_came_leaves_none(xs: Xs) -> None:
    """The reply is in (the caller's future is done) when the cancellation lands."""
    task = asyncio.ensure_future(xs.waiter.transaction_start())
    await asyncio.sleep(0)
    while xs.waiter._proto.outstanding:  # until the reply has been matched
        await asyncio.sleep(0)
    assert not task.done()  # it resumes after us: the cancellation wins
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settled(xs.waiter)
    assert xs.server_transactions() == 0

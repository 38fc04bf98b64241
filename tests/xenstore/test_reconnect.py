"""``Client(reconnect=...)`` across a restart of a xenstored with a state directory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.xenstore import Client, ConnectionClosed, Transaction, TransactionConflict
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.persist import DurableState
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir

GUARD = 10.0  # a failure guard, never a synchronisation delay


@dataclass
class Restartable:
    """One xenstored socket whose daemon can be stopped and started again."""

    sock: Path
    state: Path
    server: XenStoreServer | None = None
    durable: DurableState | None = None

    async def start(self) -> None:
        xs = XenStored()
        self.durable = DurableState(xs, self.state)
        self.durable.open()
        self.server = XenStoreServer(self.sock, xs, durable=self.durable)
        await self.server.start()

    async def stop(self) -> None:
        assert self.server is not None and self.durable is not None
        await self.server.close()
        self.durable.close()
        self.server = None


@pytest.fixture
async def daemon() -> AsyncIterator[Restartable]:
    d = short_tmpdir("reconn-")
    r = Restartable(d / "socket", d / "state")
    await r.start()
    yield r
    if r.server is not None:
        await r.stop()


async def test_watches_and_requests_carry_on_after_a_restart(daemon: Restartable) -> None:
    xs = await Client.connect(str(daemon.sock), reconnect=GUARD)
    try:
        await xs.write("/a", b"1")
        async with xs.watch("/a") as w:
            assert (await w.get(GUARD)).path == "/a"  # the initial event
            await daemon.stop()
            # A request made while the daemon is away waits for it.
            pending = asyncio.ensure_future(xs.read("/a"))
            await asyncio.sleep(0)
            assert not pending.done()
            await daemon.start()
            assert await asyncio.wait_for(pending, GUARD) == b"1"
            # The watch was registered again: its initial event, then real ones.
            assert (await w.get(GUARD)).path == "/a"
            await xs.write("/a", b"2")
            assert (await w.get(GUARD)).path == "/a"
        assert xs.epoch == 1
    finally:
        await xs.close()


async def test_a_transaction_across_a_restart_conflicts_and_retries(daemon: Restartable) -> None:
    xs = await Client.connect(str(daemon.sock), reconnect=GUARD)
    runs = 0

    async def body(t: Transaction) -> None:
        nonlocal runs
        runs += 1
        await t.write("/tx/a", b"x")
        if runs == 1:
            await daemon.stop()
            await daemon.start()
        await t.write("/tx/b", b"y")

    try:
        await xs.retry_transaction(body)
        assert runs == 2
        assert await xs.read("/tx/a") == b"x" and await xs.read("/tx/b") == b"y"
    finally:
        await xs.close()


async def test_a_request_in_flight_when_the_daemon_dies_is_sent_again(
    daemon: Restartable,
) -> None:
    xs = await Client.connect(str(daemon.sock), reconnect=GUARD)
    try:
        await xs.read("/")  # the daemon has seen the connection
        assert daemon.server is not None
        # Stop reading the client's requests, so the next one stays unanswered.
        client = next(iter(daemon.server.clients.values()))
        client.pause_reading()
        pending = asyncio.ensure_future(xs.write("/late", b"v"))
        await asyncio.sleep(0.05)
        assert not pending.done()
        await daemon.stop()
        await daemon.start()
        await asyncio.wait_for(pending, GUARD)
        assert await xs.read("/late") == b"v"
    finally:
        await xs.close()


async def test_a_transaction_request_in_flight_fails_as_a_conflict(daemon: Restartable) -> None:
    xs = await Client.connect(str(daemon.sock), reconnect=GUARD)
    try:
        t = await xs.transaction().start()
        assert daemon.server is not None and daemon.server.clients
        client = next(iter(daemon.server.clients.values()))
        client.pause_reading()
        pending = asyncio.ensure_future(t.write("/t", b"v"))
        await asyncio.sleep(0.05)
        await daemon.stop()
        await daemon.start()
        with pytest.raises(TransactionConflict, match="xenstored restarted"):
            await asyncio.wait_for(pending, GUARD)
        await t.abort()  # nothing to send: the new daemon never knew it
    finally:
        await xs.close()


async def test_a_daemon_that_does_not_come_back_closes_the_client(daemon: Restartable) -> None:
    xs = await Client.connect(str(daemon.sock), reconnect=0.3)
    try:
        async with xs.watch("/w") as w:
            await w.get(GUARD)
            await daemon.stop()
            with pytest.raises(ConnectionClosed, match=r"did not come back within 0\.3 s"):
                await w.get(GUARD)
        with pytest.raises(ConnectionClosed):
            await xs.read("/w")
    finally:
        await xs.close()


async def test_without_reconnect_a_restart_closes_the_client(daemon: Restartable) -> None:
    xs = await Client.connect(str(daemon.sock))
    try:
        await daemon.stop()
        await daemon.start()
        with pytest.raises(ConnectionClosed):
            await xs.read("/")
    finally:
        await xs.close()


async def test_a_guest_connection_comes_back_on_its_domain_socket(daemon: Restartable) -> None:
    dom0 = await Client.connect(str(daemon.sock), reconnect=GUARD)
    try:
        await dom0.introduce(5, 0, 15)
        await dom0.mkdir("/local/domain/5")
        await dom0.set_perms("/local/domain/5", ["n5"])
        assert daemon.server is not None
        guest = await Client.connect(str(daemon.server.domain_socket(5)), reconnect=GUARD)
        try:
            await guest.write("data/x", b"1")
            await daemon.stop()
            await daemon.start()
            await guest.write("data/y", b"2")
            assert await dom0.read("/local/domain/5/data/y") == b"2"
        finally:
            await guest.close()
    finally:
        await dom0.close()


async def test_stop_reconnecting_gives_up_at_once(daemon: Restartable) -> None:
    xs = await Client.connect(str(daemon.sock), reconnect=GUARD)
    try:
        await daemon.stop()
        pending = asyncio.ensure_future(xs.read("/"))
        await asyncio.sleep(0.05)
        assert not pending.done()  # waiting for the daemon to come back
        xs.stop_reconnecting()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(pending, GUARD)
        assert xs.closed
    finally:
        await xs.close()

"""Fixtures for the client tests: an in-process fake server and a client on it, or
our in-process xenstored and two clients on it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.xenstore import Client
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir
from tests.xenstore.fakeserver import FakeServer

GUARD = 10.0  # failure guard only


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: unix socket paths must stay under 108 bytes."""
    d = short_tmpdir("xsc-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def server(sock_dir: Path) -> AsyncIterator[FakeServer]:
    s = FakeServer()
    await s.start(sock_dir / "socket")
    yield s
    await s.close()


@pytest.fixture
async def client(server: FakeServer, sock_dir: Path) -> AsyncIterator[Client]:
    c = await Client.connect(str(sock_dir / "socket"), timeout=10.0)
    yield c
    await c.close()


@dataclass
class Xs:
    server: XenStoreServer
    waiter: Client
    writer: Client

    def server_watches(self) -> int:
        """Watches the daemon holds for any connection."""
        return sum(len(conn.watches) for conn in self.server.clients)

    def server_transactions(self) -> int:
        """Transactions the daemon holds open for any connection."""
        return sum(len(conn.transactions) for conn in self.server.clients)


@pytest.fixture
async def xs() -> AsyncIterator[Xs]:
    server = XenStoreServer(short_tmpdir("wait-") / "xs")
    await server.start()
    waiter = await Client.connect(str(server.socket_path), timeout=GUARD)
    writer = await Client.connect(str(server.socket_path), timeout=GUARD)
    yield Xs(server, waiter, writer)
    await writer.close()
    await waiter.close()
    await server.close()


async def late_replies_are_dropped(
    client: Client, server: FakeServer, send: Awaitable[object], requests: int
) -> None:
    """Cancel ``send`` once its ``requests`` reached a server that holds its replies and
    answers with req_id 0 (matching falls back to the order of the requests): a read
    sent after it still gets its own reply, not one of the late ones."""
    server.store["/fresh"] = b"fresh"
    server.echo_zero = True
    server.hold = True
    before = len(server.requests)
    task = asyncio.ensure_future(send)
    await asyncio.wait_for(server.wait_requests(before + requests), GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fresh = asyncio.create_task(client.read("/fresh"))
    await asyncio.wait_for(server.wait_requests(before + requests + 1), GUARD)
    server.hold = False
    server.release()
    assert await asyncio.wait_for(fresh, GUARD) == b"fresh"

"""Fixtures for the client tests: an in-process fake server and a client on it, or
our in-process xenstored and two clients on it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
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

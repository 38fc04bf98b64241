"""Fixtures for the client tests: an in-process fake server and a client on it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stubdom.xenstore import Client
from tests.support.daemons import short_tmpdir
from tests.xenstore.fakeserver import FakeServer


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

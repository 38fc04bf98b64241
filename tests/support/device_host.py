"""dom0's backends on an in-process xenstored, and guests reaching it as themselves.

The device tests (toolstack records, backends, frontends) all start from this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stubdom.host.backends import BackendManager
from stubdom.host.xenbus import XenbusState
from stubdom.xenstore import Client
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir

GUEST = 5
GUARD = 10.0  # failure guard only: every wait ends on a watch event long before


@dataclass
class Host:
    server: XenStoreServer
    dom0: Client
    run_dir: Path
    manager: BackendManager
    guests: list[Client] = field(default_factory=list)

    async def guest(self, domid: int = GUEST) -> Client:
        """Introduce ``domid`` with its home ``n0,r<domid>`` (as libxl) and connect as it."""
        await self.dom0.introduce(domid, 0, 15)
        home = f"/local/domain/{domid}"
        await self.dom0.mkdir(home)
        await self.dom0.set_perms(home, ["n0", f"r{domid}"])
        client = await Client.connect(str(self.server.domain_socket(domid)))
        self.guests.append(client)
        return client

    async def read(self, path: str) -> str:
        return (await self.dom0.read(path)).decode()

    async def state(self, path: str) -> XenbusState:
        return XenbusState.parse(await self.dom0.read(f"{path}/state"))


async def start_host() -> Host:
    """xenstored on a short temp dir, the dom0 client, and the backends running."""
    run_dir = short_tmpdir("dev-")
    server = XenStoreServer(run_dir / "xs")
    await server.start()
    dom0 = await Client.connect(str(server.socket_path))
    manager = BackendManager(dom0, run_dir)
    await manager.start()
    return Host(server, dom0, run_dir, manager)


async def stop_host(h: Host) -> None:
    await h.manager.stop()
    for g in h.guests:
        await g.close()
    await h.dom0.close()
    await h.server.close()


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    h = await start_host()
    yield h
    await stop_host(h)

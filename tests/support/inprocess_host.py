"""A whole simulated host in the test's own event loop: xenstored, dom0's backends and
the simulated hypervisor, torn down in the right order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from stubdom.host.backends.console import ConsoleBackend
from stubdom.host.backends.manager import BackendManager
from stubdom.host.simulated import SimulatedHypervisor
from stubdom.xenstore import Client
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir


@dataclass
class InProcessHost:
    root: Path
    server: XenStoreServer
    xs: Client  # dom0
    hv: SimulatedHypervisor


@contextlib.asynccontextmanager
async def inprocess_host(prefix: str = "host-") -> AsyncIterator[InProcessHost]:
    root = short_tmpdir(prefix)
    server = XenStoreServer(root / "xs")
    await server.start()
    xs = await Client.connect(str(server.socket_path))
    backends = BackendManager(await Client.connect(str(server.socket_path)), root)
    consoles = ConsoleBackend(await Client.connect(str(server.socket_path)), root)
    await backends.start()
    await consoles.start()
    hv = SimulatedHypervisor(xs, server.socket_path, root)
    try:
        yield InProcessHost(root, server, xs, hv)
    finally:
        await hv.close()
        await consoles.stop()
        await backends.stop()
        await xs.close()
        await server.close()

"""A whole simulated host inside the caller's event loop: xenstored, dom0's device and
console backends, and the simulated hypervisor, torn down in the right order.

The background `stubdom host` daemon composes the same pieces in its own process; this
is for programs (the conformance kit, tests) that want the host at hand.
"""

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
from stubdom.xenstored.trace import PacketTrace


@dataclass
class InProcessHost:
    root: Path
    server: XenStoreServer
    xs: Client  # dom0
    hv: SimulatedHypervisor


@contextlib.asynccontextmanager
async def inprocess_host(
    root: Path, trace: PacketTrace | None = None
) -> AsyncIterator[InProcessHost]:
    """Run a host in ``root`` (keep it short: unix socket paths) until the block ends."""
    server = XenStoreServer(root / "xs", trace=trace)
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

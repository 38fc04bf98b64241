"""A whole simulated host inside the caller's event loop: xenstored, dom0's device and
console backends, and the simulated hypervisor, torn down in the right order.

The background `stubdom host` daemon composes the same pieces in its own process; this
is for programs (the conformance kit, tests) that want the host at hand.  Any of the
three daemons serves it: ours in this event loop, or cx or ox (`stubdom.realxs`) as a
child process, reached through the proxy and relays of `stubdom.host.xstrace` when
traced, so that a trace reads the same whichever daemon answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stubdom import realxs
from stubdom.host.backends.console import ConsoleBackend
from stubdom.host.backends.manager import BackendManager
from stubdom.host.simulated import SimulatedHypervisor
from stubdom.host.xslink import Daemon, RealLink, XenstoredLink, domain_socket_path
from stubdom.host.xsproxy import TracingProxy
from stubdom.host.xstrace import TraceWriter
from stubdom.xenstore import Client
from stubdom.xenstored.server import XenStoreServer
from stubdom.xenstored.trace import PacketTrace


class XenstoredSockets(Protocol):
    """Where the host's xenstored is reached, whichever daemon it is."""

    @property
    def socket_path(self) -> Path:
        """dom0's socket (``XENSTORED_PATH``)."""

    def domain_socket(self, domid: int) -> Path:
        """``domid``'s socket, once the domain is introduced (and, on cx and ox, runs)."""


@dataclass(frozen=True)
class RealServer:
    """cxenstored or oxenstored: dom0's socket (the daemon's, or the tracing proxy's)."""

    socket_path: Path
    daemon: realxs.RealXenstored

    def domain_socket(self, domid: int) -> Path:
        return Path(domain_socket_path(self.socket_path, domid))


@dataclass
class InProcessHost:
    root: Path
    server: XenstoredSockets
    xs: Client  # dom0
    hv: SimulatedHypervisor


@contextlib.asynccontextmanager
async def inprocess_host(
    root: Path, trace: PacketTrace | None = None, xenstored: Daemon | str = Daemon.OURS
) -> AsyncIterator[InProcessHost]:
    """Run a host in ``root`` (keep it short: unix socket paths) until the block ends.

    ``trace`` records every packet; the caller closes it.  ``xenstored``: ours, cx or
    ox; a real daemon that is not installed raises `realxs.RealXenstoredUnavailable`.
    """
    async with contextlib.AsyncExitStack() as stack:
        server, link = await _xenstored(root, trace, Daemon(xenstored), stack)
        socket = str(server.socket_path)
        xs = await Client.connect(socket)
        stack.push_async_callback(xs.close)
        backends = BackendManager(await Client.connect(socket), root)
        consoles = ConsoleBackend(await Client.connect(socket), root)
        await backends.start()
        stack.push_async_callback(backends.stop)
        await consoles.start()
        stack.push_async_callback(consoles.stop)
        hv = SimulatedHypervisor(xs, server.socket_path, root, link)
        stack.push_async_callback(hv.close)
        yield InProcessHost(root, server, xs, hv)


async def _xenstored(
    root: Path, trace: PacketTrace | None, daemon: Daemon, stack: contextlib.AsyncExitStack
) -> tuple[XenstoredSockets, XenstoredLink | None]:
    """Start the daemon (stopped by ``stack``); None as link: the hypervisor's default,
    our CONTROL ``domain-state``."""
    public = root / "xs"
    if daemon is Daemon.OURS:
        server = XenStoreServer(public, trace=trace)
        await server.start()
        stack.push_async_callback(server.close)
        return server, None
    own = root / "real" / "socket" if trace is not None else public
    real = await asyncio.to_thread(realxs.start, daemon.value, root / "real", socket=own)
    stack.push_async_callback(asyncio.to_thread, real.stop)
    writer = None
    if trace is not None:
        writer = TraceWriter(trace)  # the caller's trace: not closed here
        proxy = await TracingProxy.start(public, own, writer.domain(0))
        stack.push_async_callback(proxy.close)
    return RealServer(public, real), RealLink(real.fake.dir, str(public), writer)

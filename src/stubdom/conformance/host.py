"""A whole simulated host in-process, with every xenstore request recorded in order.

Any xenstored may serve it: ours records the requests itself; cx and ox are recorded by
the host's proxy and relays (`stubdom.host.xstrace`), as each connection sent them.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from stubdom.host.inprocess import XenstoredSockets, inprocess_host
from stubdom.host.rundir import RunDir
from stubdom.host.xslink import Daemon
from stubdom.toolstack.session import Session
from stubdom.toolstack.spawn import HostPaths
from stubdom.wire.packet import Packet
from stubdom.xenstored.trace import PacketTrace


@dataclass(frozen=True)
class Request:
    """One request a connection sent: absolute path (relative ones resolved)."""

    seq: int
    conn: int
    dom: int
    type: str
    path: str
    value: str | None
    tx: int


@dataclass
class Recorder(PacketTrace):
    """A `PacketTrace` that keeps the incoming requests in memory."""

    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(io.StringIO())

    def record(self, direction: str, cid: int, domid: int, packet: Packet) -> None:
        if direction != "in":
            return
        parts = packet.payload.decode("utf-8", "replace").split("\0")
        path = parts[0]
        if path and not path.startswith(("/", "@")):
            path = f"/local/domain/{domid}/{path}"
        value = parts[1] if packet.type_name == "WRITE" and len(parts) > 1 else None
        self.requests.append(
            Request(len(self.requests), cid, domid, packet.type_name, path, value, packet.tx_id)
        )

    def mark(self) -> int:
        return len(self.requests)

    def since(self, mark: int) -> list[Request]:
        return self.requests[mark:]


@dataclass
class TracedHost:
    root: Path
    session: Session
    recorder: Recorder
    server: XenstoredSockets


@contextlib.asynccontextmanager
async def traced_host(xenstored: Daemon | str = Daemon.OURS) -> AsyncIterator[TracedHost]:
    """xenstored (ours, cx or ox) + dom0 backends + the simulated hypervisor in a
    temporary run dir."""
    root = Path(tempfile.mkdtemp(prefix="sconf-", dir="/tmp"))  # short: unix sockets
    rec = Recorder()
    paths = HostPaths.under(root)
    paths.ensure()
    try:
        async with inprocess_host(root, trace=rec, xenstored=xenstored) as h:
            yield TracedHost(root, Session(h.hv, h.xs, paths, RunDir(root)), rec, h.server)
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""What every toolstack command starts from: the running host, its xenstore, its files.

Commands name a domain by name or domid, as xl does; `resolve_guest` turns either into
the guest's domid and refuses stubdomains (they follow their guest).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from stubdom import protocol as proto
from stubdom.host.api import HostNotRunning, RemoteHypervisor
from stubdom.host.hypervisor import DomainInfo, Hypervisor, HypervisorError
from stubdom.host.rundir import RunDir, resolve
from stubdom.toolstack.channel import ChannelRegistry
from stubdom.toolstack.spawn import HostPaths
from stubdom.xenstore import RECONNECT, Client


class ToolstackError(Exception):
    """A command cannot go on; the message is one line naming the object and the fix."""


@dataclass
class Session:
    hv: Hypervisor
    xs: Client
    paths: HostPaths
    run_dir: RunDir
    #: What the device-model channels opened on ``xs`` keep between commands (their
    #: watches, the in-process locks): it lives as long as the connection.
    channels: ChannelRegistry = field(default_factory=ChannelRegistry)

    async def domains(self) -> Sequence[DomainInfo]:
        return await self.hv.list_domains()

    async def stubdom_of(self, guest: int) -> int | None:
        raw = await self.xs.read_optional(proto.device_model_domid_path(guest))
        return int(raw) if raw else None

    async def resolve_guest(self, name_or_id: str) -> DomainInfo:
        """A guest by name or domid; `ToolstackError` for unknown names and stubdomains."""
        infos = await self.domains()
        found: DomainInfo | None = None
        if name_or_id.isdigit():
            found = next((d for d in infos if d.domid == int(name_or_id)), None)
        if found is None:
            found = next((d for d in infos if d.name == name_or_id), None)
        if found is None:
            raise ToolstackError(f"no domain {name_or_id!r}; 'stubdom list' shows the domains")
        if found.domid == 0:
            raise ToolstackError("Domain-0 is the host itself; name a guest")
        if found.name.endswith(proto.STUBDOM_SUFFIX) and await self.xs.exists(
            proto.target_path(found.domid)
        ):
            guest = found.name[: -len(proto.STUBDOM_SUFFIX)]
            raise ToolstackError(f"{found.name!r} is the stubdomain of {guest!r}; name the guest")
        return found


@contextlib.asynccontextmanager
async def open_session(directory: str | None = None) -> AsyncIterator[Session]:
    """Connect to the host of ``directory`` (the default run directory if None)."""
    rd = resolve(directory)
    try:
        hv = await RemoteHypervisor.connect(rd.root)
    except HostNotRunning as e:
        raise ToolstackError(str(e)) from None
    except HypervisorError as e:
        raise ToolstackError(str(e)) from None
    try:
        xs = await Client.connect(str(rd.xenstored_socket), reconnect=RECONNECT)
    except OSError as e:
        await hv.close()
        raise ToolstackError(
            f"the host's xenstored at {rd.xenstored_socket} does not answer "
            f"({e.strerror or e}); restart it with 'stubdom host up'"
        ) from None
    paths = HostPaths.under(rd.root)
    paths.ensure()
    try:
        yield Session(hv, xs, paths, rd)
    finally:
        await xs.close()
        await hv.close()

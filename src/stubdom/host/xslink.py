"""What the hypervisor tells xenstored, and how a domain reaches it, for each daemon.

Xen tells xenstored about domains through VIRQ_DOM_EXC and the domain-info hypercall,
and a domain reaches xenstored over its one shared ring.  Our daemon has neither: the
simulated hypervisor reports with CONTROL ``domain-state``, and our xenstored serves a
socket per domain (``<socket>.d/<domid>``) itself.  The real cxenstored and oxenstored
run under the shim of `stubdom.realxs`: a domain's state is a marker file plus the VIRQ
kick, and the domain's socket is a relay (`stubdom.host.xsrelay`) that multiplexes every
program of the domain onto the domain's ring, as the domain's kernel would.  Either way a
domain program sees the same ``XENSTORED_PATH``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from pathlib import Path
from typing import Protocol

from stubdom.host.hypervisor import HypervisorError
from stubdom.host.xsrelay import DomainRelay
from stubdom.host.xstrace import TraceWriter
from stubdom.realxs import DomainState, FakeXen
from stubdom.xenstore import Client, RingTransport, XenStoreError

log = logging.getLogger(__name__)


class Daemon(enum.StrEnum):
    """Which xenstored the host runs."""

    OURS = "ours"
    CX = "cx"
    OX = "ox"


class XenstoredLink(Protocol):
    async def domain_state(self, domid: int, state: str) -> None:
        """Tell xenstored that ``domid`` is now ``state``: running, shutdown, crashed or
        gone (the states of our CONTROL ``domain-state``)."""

    async def domain_socket(self, domid: int) -> str:
        """The ``XENSTORED_PATH`` of ``domid``'s programs, ready to connect to."""

    async def close(self) -> None: ...


def domain_socket_path(xenstored_socket: str | Path, domid: int) -> str:
    """``<socket>.d/<domid>``: where a domain's programs find xenstore on every daemon."""
    return f"{xenstored_socket}.d/{domid}"


class OursLink:
    """Our xenstored: CONTROL ``domain-state``, and the daemon's own domain sockets."""

    def __init__(self, xenstore: Client, xenstored_socket: str) -> None:
        self.xenstore = xenstore
        self.xenstored_socket = xenstored_socket

    async def domain_state(self, domid: int, state: str) -> None:
        try:
            await self.xenstore.control("domain-state", str(domid), state)
        except (XenStoreError, ConnectionError) as e:
            log.warning("could not tell xenstored that domain %d is %s: %s", domid, state, e)

    async def domain_socket(self, domid: int) -> str:
        return domain_socket_path(self.xenstored_socket, domid)

    async def close(self) -> None:
        return None


class RealLink:
    """cxenstored or oxenstored under the shim: marker files, the VIRQ, ring relays
    (which record their clients in ``trace``, when the host is traced)."""

    def __init__(
        self, fake_dir: Path, xenstored_socket: str, trace: TraceWriter | None = None
    ) -> None:
        self.fake = FakeXen(fake_dir)
        self.xenstored_socket = xenstored_socket
        self.trace = trace
        self._relays: dict[int, DomainRelay] = {}

    async def domain_state(self, domid: int, state: str) -> None:
        if state == "running":
            self.fake.unmark(domid)
            return
        self.fake.mark(domid, DomainState.GONE if state == "gone" else DomainState.SHUTDOWN)
        self.fake.kick_virq()
        if state == "gone":
            await self._drop_relay(domid)

    async def domain_socket(self, domid: int) -> str:
        path = domain_socket_path(self.xenstored_socket, domid)
        if domid not in self._relays:
            self._relays[domid] = await self._start_relay(domid, Path(path))
        return path

    async def _start_relay(self, domid: int, path: Path) -> DomainRelay:
        fake = self.fake
        port = fake.port(domid)
        if port is None:
            raise HypervisorError(
                f"domain {domid} has no xenstore ring yet: the toolstack must introduce "
                "it to xenstored before it runs"
            )

        async def upstream() -> RingTransport:
            return await RingTransport.open(
                fake.ring_page(domid),
                fake.evtchn,
                port,
                notify=fake.notify_fifo(domid),
                description=f"ring of domain {domid}",
            )

        path.parent.mkdir(mode=0o700, exist_ok=True)
        trace = self.trace.domain(domid) if self.trace is not None else None
        relay = await DomainRelay.start(path, upstream, f"domain {domid}", trace)
        log.info("domain %d reaches xenstore through %s", domid, path)
        return relay

    async def _drop_relay(self, domid: int) -> None:
        relay = self._relays.pop(domid, None)
        if relay is not None:
            with contextlib.suppress(Exception):
                await relay.close()

    async def close(self) -> None:
        for domid in list(self._relays):
            await self._drop_relay(domid)

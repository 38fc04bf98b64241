"""The shim's directory, seen as the fake Xen it stands for.

Under the shim (``shim.c``) a domain's ring page is the file ``ring-<domid>``, the
daemon's event-channel device is the FIFO ``evtchn`` (one byte = one pending port), the
daemon's notifications to a domain arrive on the FIFO ``notify-<domid>``, and marker
files change what the daemon learns about a domain.  :class:`FakeXen` names those files
and does the few writes a host or a guest needs; docs/realxs.md has the whole picture.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)

#: The port of VIRQ_DOM_EXC: a kick with it makes the daemon re-check every domain.
VIRQ_PORT = 1
#: A kick is one byte; the shim hands out ports from 10 (dom0's is the first).
MAX_KICK_PORT = 255
#: struct xenstore_domain_interface fits in one page.
RING_PAGE = 4096


class DomainState(StrEnum):
    """What a marker makes the daemon see when it next asks about the domain."""

    DEAD = "dead"  # dying: the daemon releases it and fires @releaseDomain
    SHUTDOWN = "shutdown"  # shut down: @releaseDomain, the domain stays introduced
    GONE = "gone"  # no such domain at all


def kick_byte(port: int) -> bytes:
    """The byte that signals ``port`` on ``evtchn``; ports beyond one byte cannot be."""
    if not 0 < port <= MAX_KICK_PORT:
        raise ValueError(f"event-channel port {port} does not fit the one-byte kick (1..255)")
    return bytes([port])


@dataclass(frozen=True)
class FakeXen:
    """The files of one shim directory (``$XSFAKE_DIR``)."""

    dir: Path

    @property
    def evtchn(self) -> Path:
        return self.dir / "evtchn"

    def ring_page(self, domid: int) -> Path:
        """The domain's ring page; the daemon creates it on INTRODUCE."""
        return self.dir / f"ring-{domid}"

    def port(self, domid: int) -> int | None:
        """The local port the daemon bound for the domain, None before INTRODUCE."""
        try:
            return int((self.dir / f"port-{domid}").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def notify_fifo(self, domid: int) -> Path:
        """The FIFO the daemon writes a byte to whenever it changed the domain's ring."""
        return self.dir / f"notify-{domid}"

    def marker(self, domid: int, state: DomainState | str) -> Path:
        return self.dir / f"{DomainState(state)}-{domid}"

    def reset(self) -> None:
        """An empty directory: no rings, ports or markers from an earlier run."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)

    def kick(self, port: int) -> None:
        """Signal ``port`` to the daemon (after changing that domain's ring).

        oxenstored dispatches on the port, so a guest kicks with its own ``port(domid)``;
        cxenstored scans every ring whatever the byte.  A full FIFO is fine: the daemon
        has wake-ups pending.  No daemon reading the FIFO is an error.
        """
        data = kick_byte(port)
        try:
            fd = os.open(self.evtchn, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ENXIO:
                raise RuntimeError(f"{self.evtchn}: no daemon is reading it") from None
            raise
        try:
            os.write(fd, data)
        except BlockingIOError:
            log.debug("%s full: the daemon has kicks pending", self.evtchn)
        finally:
            os.close(fd)

    def kick_virq(self) -> None:
        """Make the daemon re-read every domain's state (after :meth:`mark`)."""
        self.kick(VIRQ_PORT)

    def mark(self, domid: int, state: DomainState | str) -> None:
        """From the daemon's next look on (see :meth:`kick_virq`), the domain is ``state``."""
        self.marker(domid, state).touch()

    def unmark(self, domid: int) -> None:
        """The domain exists and runs again."""
        for state in DomainState:
            self.marker(domid, state).unlink(missing_ok=True)

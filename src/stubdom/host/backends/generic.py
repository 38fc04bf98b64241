"""What every dom0 backend driver shares: the device handle and the driver hooks.

A driver only says what a real backend would write at each step (as node -> value
maps); `stubdom.host.backends.manager` decides *when* (with `BackendHandshake`) and
writes the nodes together with the new state in one transaction, so a frontend that
sees InitWait or Connected also sees what the backend published with it.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from stubdom.host.xenbus import XenbusState
from stubdom.wire.paths import domain_path
from stubdom.xenstore import Client

log = logging.getLogger(__name__)


class SetupFailed(Exception):
    """The backend cannot serve the device; the message becomes ``hotplug-error``.

    ``errno`` goes into the ``error/backend/...`` node the way ``xenbus_dev_fatal``
    formats it (``"<errno> <message>"``).
    """

    def __init__(self, message: str, err: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = err


@dataclass
class BackendDevice:
    """One backend directory that dom0 serves, and what the manager knows about it."""

    client: Client
    kind: str
    domid: int
    devid: int
    path: str
    run_dir: Path
    backend_domid: int = 0
    #: The frontend directory, once ``frontend``/``frontend-id`` were found valid.
    frontend: str | None = None
    #: Setup ran and its nodes were published with InitWait.
    set_up: bool = False
    #: Setup or connect failed: the device closes and never reconnects.
    failed: bool = False
    torn_down: bool = False
    last_state: XenbusState | None = None
    #: What a driver remembers about the device between hooks (e.g. its ifname).
    notes: dict[str, str] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        """``backend/<kind>/<domid>/<devid>``: the path relative to the backend domain."""
        return self.path[len(domain_path(self.backend_domid)) + 1 :]

    @property
    def error_path(self) -> str:
        """Where ``xenbus_dev_error`` reports: ``/local/domain/0/error/backend/...``."""
        return f"{domain_path(self.backend_domid)}/error/{self.name}"

    def reset(self) -> None:
        """The directory was re-created under us: forget what we did for the old one."""
        self.set_up = self.failed = self.torn_down = False
        self._warned.clear()
        self.notes.clear()

    def warn_once(self, key: str, message: str, *args: object) -> None:
        """Log a bad value once per distinct value, so a guest cannot flood the log."""
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning("%s: " + message, self.name, *args)

    async def read(self, node: str) -> str | None:
        """A backend node's value, or None if missing."""
        return await self.client.read_text(f"{self.path}/{node}")

    async def read_frontend(self, node: str) -> str | None:
        if self.frontend is None:
            return None
        return await self.client.read_text(f"{self.frontend}/{node}")


Nodes = dict[str, str]


class BackendDriver:
    """The hooks of one device kind; the defaults suit a backend with nothing to do."""

    kind: ClassVar[str] = ""
    #: Nodes the frontend must publish before the backend connects (its rings).
    frontend_requires: ClassVar[tuple[str, ...]] = ()

    async def setup(self, dev: BackendDevice) -> Nodes:
        """Probe and hotplug: the nodes to publish with InitWait; `SetupFailed` if unusable."""
        return {}

    async def connect(self, dev: BackendDevice) -> Nodes:
        """The frontend is ready: map its rings; the nodes to publish with Connected."""
        for node in self.frontend_requires:
            if await dev.read_frontend(node) is None:
                raise SetupFailed(f"frontend {dev.frontend} did not publish {node}", errno.ENOENT)
        return {}

    async def reconfigure(
        self, dev: BackendDevice, own: XenbusState, frontend: XenbusState
    ) -> tuple[XenbusState | None, Nodes]:
        """States 7/8 (pciback only): the next state and the nodes to write with it."""
        return None, {}

    async def teardown(self, dev: BackendDevice) -> None:
        """The device is gone (closed offline, or its directory removed): release it."""

"""Xenbus facts shared by backends and frontends: states and the node layout.

``XenbusState`` is ``enum xenbus_state`` of xen/include/public/io/xenbus.h.  The paths
are the ones libxl creates: the frontend directory under the domain, the backend
directory under the backend domain (dom0 here), each pointing at the other.
"""

from __future__ import annotations

import enum

from stubdom.wire.paths import domain_path


class XenbusState(enum.IntEnum):
    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @classmethod
    def parse(cls, raw: bytes | str | None) -> XenbusState:
        """A state node's value; anything unreadable counts as UNKNOWN."""
        try:
            return cls(int(raw or 0))
        except ValueError:
            return cls.UNKNOWN

    def node(self) -> bytes:
        return str(int(self)).encode()


#: Device kinds and the frontend directory name under ``device/`` (console 0 differs).
DEVICE_KINDS = ("vbd", "vif", "vfb", "vkbd", "console", "pci")

#: libxl's backend directory names for the device kinds (vkb is "vkbd" in xenstore).
BACKEND_DOMID = 0


def frontend_path(domid: int, kind: str, devid: int) -> str:
    """Where the frontend of a device lives; console 0 is ``/local/domain/D/console``."""
    if kind == "console" and devid == 0:
        return f"{domain_path(domid)}/console"
    return f"{domain_path(domid)}/device/{kind}/{devid}"


def backend_path(domid: int, kind: str, devid: int, backend_domid: int = BACKEND_DOMID) -> str:
    return f"{domain_path(backend_domid)}/backend/{kind}/{domid}/{devid}"


def backend_root(backend_domid: int = BACKEND_DOMID) -> str:
    return f"{domain_path(backend_domid)}/backend"

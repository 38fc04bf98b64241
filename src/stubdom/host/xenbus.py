"""Xenbus facts shared by backends and frontends: states and the node layout.

``XenbusState`` is ``enum xenbus_state`` of xen/include/public/io/xenbus.h.  The paths
are the ones libxl creates: the frontend directory under the domain, the backend
directory under the backend domain (dom0 here), each pointing at the other.
"""

from __future__ import annotations

import enum
import re

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

    @property
    def label(self) -> str:
        """``4 (Connected)``: the number and Xen's name (``XenbusStateConnected``)."""
        return f"{int(self)} ({_XEN_NAMES[self]})"


_XEN_NAMES = {
    XenbusState.UNKNOWN: "Unknown",
    XenbusState.INITIALISING: "Initialising",
    XenbusState.INIT_WAIT: "InitWait",
    XenbusState.INITIALISED: "Initialised",
    XenbusState.CONNECTED: "Connected",
    XenbusState.CLOSING: "Closing",
    XenbusState.CLOSED: "Closed",
    XenbusState.RECONFIGURING: "Reconfiguring",
    XenbusState.RECONFIGURED: "Reconfigured",
}


#: Every backend here lives in dom0.
BACKEND_DOMID = 0

#: What libxl writes into a console's ``protocol`` and ``limit`` nodes.
XENCONSOLE_PROTOCOL = "vt100"
XENCONSOLE_LIMIT = 1048576

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def valid_mac(mac: str) -> bool:
    """A vif ``mac`` node as netback accepts it: six colon-separated hex pairs."""
    return _MAC_RE.fullmatch(mac) is not None


def frontend_path(domid: int, kind: str, devid: int) -> str:
    """Where the frontend of a device lives; console 0 is ``/local/domain/D/console``."""
    if kind == "console" and devid == 0:
        return f"{domain_path(domid)}/console"
    return f"{domain_path(domid)}/device/{kind}/{devid}"


def backend_path(domid: int, kind: str, devid: int, backend_domid: int = BACKEND_DOMID) -> str:
    return f"{domain_path(backend_domid)}/backend/{kind}/{domid}/{devid}"


def backend_root(backend_domid: int = BACKEND_DOMID) -> str:
    return f"{domain_path(backend_domid)}/backend"


class BackendHandshake:
    """The backend half of the xenbus handshake, as a transition function (no I/O).

    Feed it what the backend driver sees (its own state node, the frontend's state,
    ``online``, whether setup succeeded) and it answers the state to write next, or
    None.  The shape is Linux's xenbus backends': InitWait once set up, Connected once
    the frontend is Initialised or Connected, Closed once the frontend has closed or
    is gone while the toolstack asks for removal (``online`` = 0, state Closing).
    """

    def next_state(
        self, own: XenbusState, frontend: XenbusState, online: bool, ready: bool = True
    ) -> XenbusState | None:
        if own is XenbusState.INITIALISING:
            if not online:
                return XenbusState.CLOSED
            return XenbusState.INIT_WAIT if ready else None
        if own is XenbusState.INIT_WAIT:
            if not online or frontend in (XenbusState.CLOSING, XenbusState.CLOSED):
                return XenbusState.CLOSING
            if frontend in (XenbusState.INITIALISED, XenbusState.CONNECTED):
                return XenbusState.CONNECTED
            return None
        if own is XenbusState.CONNECTED:
            if not online or frontend in (XenbusState.CLOSING, XenbusState.CLOSED):
                return XenbusState.CLOSING
            return None
        if own is XenbusState.CLOSING:
            # Closed once the frontend let go, or if there is no live frontend at all.
            if frontend in (XenbusState.CLOSED, XenbusState.UNKNOWN, XenbusState.INITIALISING):
                return XenbusState.CLOSED
            return None
        if own is XenbusState.CLOSED and online and frontend is XenbusState.INITIALISING:
            return XenbusState.INIT_WAIT  # the frontend came back (reconnect after a close)
        return None


class FrontendHandshake:
    """The frontend half: what a Mini-OS or Linux frontend writes as the backend moves.

    ``skip_initialised``: Connected straight from Initialising once the backend waits,
    as Mini-OS's consfront does (it then waits for the backend's Connected); other
    frontends say Initialised first."""

    def __init__(self, *, skip_initialised: bool = False) -> None:
        self.skip_initialised = skip_initialised

    def next_state(
        self, own: XenbusState, backend: XenbusState, closing: bool = False
    ) -> XenbusState | None:
        if closing or backend in (XenbusState.CLOSING, XenbusState.CLOSED):
            if own in (XenbusState.CLOSED, XenbusState.UNKNOWN):
                return None
            if own is not XenbusState.CLOSING:
                return XenbusState.CLOSING
            return (
                XenbusState.CLOSED if backend in (XenbusState.CLOSING, XenbusState.CLOSED) else None
            )
        if own is XenbusState.INITIALISING and backend in (
            XenbusState.INIT_WAIT,
            XenbusState.CONNECTED,
        ):
            return XenbusState.CONNECTED if self.skip_initialised else XenbusState.INITIALISED
        # A backend past Connected (pciback reconfiguring for a hot-plug that came
        # before we saw it connect) has connected too: catch up, then follow it.
        if own is XenbusState.INITIALISED and backend in (
            XenbusState.CONNECTED,
            XenbusState.RECONFIGURING,
            XenbusState.RECONFIGURED,
        ):
            return XenbusState.CONNECTED
        return None

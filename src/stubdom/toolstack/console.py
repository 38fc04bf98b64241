"""``stubdom console``: the terminal joined to a guest's serial port, as ``xl console``.

Serial port n of the guest is console 3+n of its stubdomain (``STUBDOM_CONSOLE_SERIAL``
in libxl, whose primary console of a stubdomain guest is that one); with a ``pty``
output spec the console backend names the pty in the frontend's ``tty`` node.  Ctrl+]
detaches, as in xl.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator
from dataclasses import dataclass

from stubdom import protocol as proto
from stubdom.host.hypervisor import DomainInfo
from stubdom.toolstack.session import Session, ToolstackError

DETACH = b"\x1d"  # Ctrl+]


@dataclass(frozen=True)
class ConsoleRef:
    """A console to attach to: its pty and what it is, for the banner."""

    tty: str
    what: str


def console_frontend(domid: int, n: int) -> str:
    """Console 0 lives at ``/local/domain/D/console``, the others below ``device/``."""
    base = f"/local/domain/{domid}"
    return f"{base}/console" if n == 0 else f"{base}/device/console/{n}"


async def _pty(s: Session, domid: int, n: int, what: str, missing: str) -> str:
    """The pty of console ``n`` of ``domid`` (``what``); ``missing``: the error if the
    console does not exist."""
    front = console_frontend(domid, n)
    output = await s.xs.read_optional(f"{front}/output")
    if output is None and not await s.xs.exists(front):
        raise ToolstackError(missing)
    if output not in (None, b"pty"):
        raise ToolstackError(f"{what} goes to {output.decode()!r}, not a pty: read that instead")
    path = await s.xs.read_optional(f"{front}/tty")
    if not path:
        raise ToolstackError(f"{what} has no pty yet; is its device model running?")
    return path.decode()


async def serial_tty(s: Session, guest: int, number: int) -> str:
    """Serial port ``number`` of ``guest``: console 3+number of its stubdomain."""
    stub = await s.stubdom_of(guest)
    if stub is None:
        raise ToolstackError(f"domain {guest} has no device-model stubdomain")
    return await _pty(
        s, stub, proto.CONSOLE_SERIAL + number, f"serial port {number} of domain {guest}",
        f"domain {guest} has no serial port {number}; add serial = [ 'pty' ] to its "
        "configuration",
    )


async def find_console(s: Session, domain: str, kind: str, number: int) -> ConsoleRef:
    """What ``xl console -t kind -n number domain`` attaches to, here.

    ``serial`` (the default) is the guest's serial port, served by its stubdomain.  An
    HVM guest here has no OS, so no PV console; ``pv`` names the PV consoles of a
    stubdomain (0 its log, 1 and 2 save and restore, 3+ the guest's serial ports).
    ``vuart`` exists on Arm guests only."""
    if kind == "vuart":
        raise ToolstackError(f"{domain} has no vuart: that console exists on Arm guests only; "
                             "use -t serial")
    if kind == "serial":
        guest = await s.resolve_guest(domain)
        tty = await serial_tty(s, guest.domid, number)
        stub = await s.stubdom_of(guest.domid)
        return ConsoleRef(tty, f"{guest.name} serial {number} ({tty}, console "
                               f"{proto.CONSOLE_SERIAL + number} of domain {stub})")
    info = await _any_domain(s, domain)
    if info.hvm:
        raise ToolstackError(
            f"{info.name} is an HVM guest with no OS here, so it has no PV console; "
            f"use -t serial for its serial port, or -t pv on {proto.stubdom_name(info.name)}"
        )
    tty = await _pty(
        s, info.domid, number, f"PV console {number} of {info.name}",
        f"{info.name} has no PV console {number}; 'stubdom xenstore ls "
        f"/local/domain/{info.domid}/device/console' lists its consoles",
    )
    return ConsoleRef(tty, f"{info.name} PV console {number} ({tty})")


async def _any_domain(s: Session, name_or_id: str) -> DomainInfo:
    infos = await s.domains()
    found = next((d for d in infos if str(d.domid) == name_or_id), None) or next(
        (d for d in infos if d.name == name_or_id), None)
    if found is None or found.domid == 0:
        raise ToolstackError(f"no domain {name_or_id!r}; 'stubdom list' shows the domains")
    return found


async def vnc_display(s: Session, guest: int, listen: str) -> str:
    """``host:port`` of the guest's VNC server, as ``libxl_vncviewer_exec`` finds it
    (``console/vnc-port``, which the device model writes)."""
    port = await s.xs.read_optional(f"/local/domain/{guest}/console/vnc-port")
    if not port:
        raise ToolstackError(
            f"domain {guest} has no VNC display: its device model published no "
            "console/vnc-port (the sim device model has no display)"
        )
    return f"{listen or '127.0.0.1'}:{port.decode()}"


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def attach(path: str) -> None:
    """Copy the pty to stdout and stdin to the pty until Ctrl+] or end of input."""
    pty_fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()

    def from_pty() -> None:
        try:
            data = os.read(pty_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if not done.done():
                done.set_result(None)
            return
        os.write(stdout, data)

    def from_stdin() -> None:
        data = os.read(stdin, 4096)
        if not data or DETACH in data:
            data = data.split(DETACH, 1)[0]
            if data:
                os.write(pty_fd, data)
            if not done.done():
                done.set_result(None)
            return
        os.write(pty_fd, data)

    with _raw(stdin):
        loop.add_reader(pty_fd, from_pty)
        loop.add_reader(stdin, from_stdin)
        try:
            await done
        finally:
            loop.remove_reader(pty_fd)
            loop.remove_reader(stdin)
            os.close(pty_fd)

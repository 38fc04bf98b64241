"""``stubdom console``: the terminal joined to a guest's serial port, as ``xl console``.

Serial port n of the guest is console 3+n of its stubdomain (reference §1.5); with a
``pty`` output spec the console backend names the pty in the frontend's ``tty`` node.
Ctrl+] detaches, as in xl.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator

from stubdom import protocol as proto
from stubdom.toolstack.session import Session, ToolstackError

DETACH = b"\x1d"  # Ctrl+]


async def serial_tty(s: Session, guest: int, number: int) -> str:
    stub = await s.stubdom_of(guest)
    if stub is None:
        raise ToolstackError(f"domain {guest} has no device-model stubdomain")
    front = f"/local/domain/{stub}/device/console/{proto.CONSOLE_SERIAL + number}"
    output = await s.xs.read_optional(f"{front}/output")
    if output is None and not await s.xs.exists(front):
        raise ToolstackError(f"domain {guest} has no serial port {number}; "
                             "add serial = [ 'pty' ] to its configuration")
    if output not in (None, b"pty"):
        raise ToolstackError(f"serial port {number} of domain {guest} goes to "
                             f"{output.decode()!r}, not a pty: read that instead")
    path = await s.xs.read_optional(f"{front}/tty")
    if not path:
        raise ToolstackError(f"serial port {number} of domain {guest} has no pty yet; "
                             "is its device model running?")
    return path.decode()


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


async def attach_serial(s: Session, guest: int, number: int) -> None:
    """Copy the pty to stdout and stdin to the pty until Ctrl+] or end of input."""
    path = await serial_tty(s, guest, number)
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

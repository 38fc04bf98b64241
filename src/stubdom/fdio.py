"""Waiting on and writing to a non-blocking file descriptor from asyncio (a pty master,
a FIFO), cancellably, where a blocking call would hold the loop; connecting to a unix
socket whose listener is behind."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import time
from pathlib import Path

#: A failure guard: how long `connect_unix` waits for a listener that accepts nothing.
CONNECT_TIMEOUT = 10.0


def set_once(fut: asyncio.Future[None] | None) -> None:
    """Wake whoever awaits ``fut``, unless it is already done (or there is none): a
    callback that may fire after the waiter gave up."""
    if fut is not None and not fut.done():
        fut.set_result(None)


async def wait_fd(fd: int, *, writable: bool = False) -> None:
    """Until ``fd`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    if writable:
        loop.add_writer(fd, set_once, fut)
    else:
        loop.add_reader(fd, set_once, fut)
    try:
        await fut
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def write_fd_all(fd: int, data: bytes | memoryview) -> None:
    """All of ``data`` to the non-blocking ``fd``."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await wait_fd(fd, writable=True)


async def connect_unix(path: str, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A non-blocking unix stream socket connected to ``path``, for asyncio to adopt.

    cxenstored and oxenstored listen with a backlog of 1, so a burst of clients finds it
    full and a non-blocking connect fails with EAGAIN.  asyncio (3.11) takes that for
    "in progress" and hands back a socket that never connected (its first read fails
    with EINVAL).  Here EAGAIN is retried, cancellably, until the daemon has accepted
    the clients ahead; ``timeout`` bounds it (`TimeoutError`).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    delay = 0.001
    try:
        while True:
            try:
                sock.connect(path)
                return sock
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path} accepted no connection within {timeout:g} s"
                    ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
    except BaseException:
        sock.close()
        raise


def remove_stale_socket(path: Path) -> None:
    """A socket left by an earlier run (a crash) is replaced; any other file is not
    ours to delete."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(
            errno.EEXIST,
            f"{path} exists and is not a socket; remove it or choose another socket path",
            str(path),
        )
    path.unlink()

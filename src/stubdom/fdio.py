"""Waiting on and writing to a non-blocking file descriptor from asyncio (a pty master,
a FIFO), cancellably, where a blocking call would hold the loop."""

from __future__ import annotations

import asyncio
import os


async def wait_fd(fd: int, *, writable: bool = False) -> None:
    """Until ``fd`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if writable:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
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

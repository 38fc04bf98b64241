"""Consoles 1 and 2 as files, the way Mini-OS's ``open()`` of ``/var/lib/xen/...`` makes them.

Save (`SaveRelay`): the application writes its state into a FIFO.  We hold the FIFO's
read end open from the start (so the application's open never blocks), connect console
1 when the application's first bytes (or its close) show up, copy, and on its close
close console 1 -- a close that returns once the backend has everything on disk.  Only
then is the relay idle again, which is what the xenstore proxy waits for before it lets
``paused`` through.  "Busy" is read from the FIFO itself (`poll`: unread data, or a
writer that came and went), so a ``paused`` that reaches the proxy before this loop
has noticed the application's close still waits.  After each close the read end is
opened afresh before the old one goes: a FIFO's end-of-file shows once per read end.

Restore (`feed_restore`): Mini-OS opens console 2 when qemu opens the restore file for
reading; we wait for the application to open the FIFO, then copy console 2 into it
until the backend's end of file (with ``-loadvm``), and close it.  Without ``-loadvm``
the application reads end-of-file at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import select
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from stubdom.fdio import wait_fd, write_fd_all
from stubdom.host.frontend.console import Console, ConsoleError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Linux's F_SETPIPE_SZ: a larger pipe moves a large saved state in fewer steps.
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


def _open_read_end(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    return fd


class SaveRelay:
    """The save FIFO -> console 1; `idle` returns once everything written is durable."""

    def __init__(self, path: Path, open_console: Callable[[], Awaitable[Console]]) -> None:
        self.path = path
        self.open_console = open_console
        self._fd = -1
        self._console: Console | None = None
        self._active = False  # a session (the application's open..close) is in progress
        self._dropping = False  # console 1 could not be had: this session is discarded
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.sessions = 0
        self.bytes = 0

    def start(self) -> None:
        os.mkfifo(self.path, 0o600)
        self._fd = _open_read_end(self.path)
        self.task = asyncio.get_running_loop().create_task(self._run(), name="save relay")

    def _pending(self) -> bool:
        """Unread bytes, or a writer that opened and closed since our read end opened."""
        p = select.poll()
        p.register(self._fd, select.POLLIN)
        return bool(p.poll(0))

    def busy(self) -> bool:
        return self._active or (self._fd >= 0 and self._pending())

    async def idle(self) -> None:
        """Return once nothing the application wrote to the FIFO is still on its way."""
        while self.busy():
            if self.task is None or self.task.done():
                return  # the relay is gone: nothing will ever drain it
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self._console is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._console.close(), 10)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _notify(self) -> None:
        self._changed.set()

    async def _readable(self) -> None:
        await wait_fd(self._fd)

    async def _run(self) -> None:
        try:
            while True:
                await self._readable()
                while True:
                    try:
                        data = os.read(self._fd, CHUNK)
                    except BlockingIOError:
                        break
                    self._active = True
                    if not data:
                        await self._end_session()
                        break
                    await self._write(data)
        finally:
            self._active = False
            self._notify()

    async def _write(self, data: bytes) -> None:
        if self._console is None and not self._dropping:
            try:
                self._console = await self.open_console()
                log.info("save: console 1 connected")
            except ConsoleError as e:
                log.error("save: console 1: %s; the saved state is lost", e)
                self._dropping = True  # the rest of this session goes nowhere
        if self._console is not None:
            try:
                await self._console.write(data)
            except ConsoleError as e:
                log.error("save: console 1: %s; the saved state is cut short", e)
        self.bytes += len(data)

    async def _end_session(self) -> None:
        """The application closed the FIFO: a fresh read end, then console 1 closed."""
        old, self._fd = self._fd, _open_read_end(self.path)
        os.close(old)
        if self._console is None and not self._dropping:
            with contextlib.suppress(ConsoleError):
                self._console = await self.open_console()  # an empty state is a state
        if self._console is not None:
            con, self._console = self._console, None
            await con.close()  # returns once the backend has it all on disk
        log.info("save: %d bytes relayed to console 1, console 1 closed", self.bytes)
        self.sessions += 1
        self.bytes = 0
        self._dropping = False
        self._active = False
        self._notify()


# -- restore -------------------------------------------------------------------------------


def _open_write_end_in_thread(path: Path) -> asyncio.Future[int]:
    """Open the FIFO for writing, which blocks until the application opens it: in a
    daemon thread, which is simply abandoned if the application never does."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()

    def opener() -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            loop.call_soon_threadsafe(_settle, fut, e)
            return

        def deliver() -> None:
            if fut.done():
                os.close(fd)
            else:
                fut.set_result(fd)

        loop.call_soon_threadsafe(deliver)

    threading.Thread(target=opener, name="restore fifo", daemon=True).start()
    return fut


def _settle(fut: asyncio.Future[Any], error: BaseException | None) -> None:
    if not fut.done():
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


async def feed_restore(path: Path, open_console: Callable[[], Awaitable[Console]] | None) -> int:
    """Console 2 into the restore FIFO once the application opens it (nothing without
    ``open_console``); the bytes relayed."""
    os.mkfifo(path, 0o600)
    fd = await _open_write_end_in_thread(path)
    total = 0
    try:
        os.set_blocking(fd, False)
        if open_console is None:
            return 0
        con = await open_console()
        try:
            while chunk := await con.read(CHUNK):
                await write_fd_all(fd, chunk)
                total += len(chunk)
        finally:
            await con.close()
        log.info("restore: %d bytes relayed from console 2", total)
        return total
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
        log.warning("restore: the application closed the FIFO after %d bytes", total)
        return total
    finally:
        os.close(fd)

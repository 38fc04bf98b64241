"""Byte transports under the client: the daemon's Unix socket and the xenbus device.

Both carry the same wire format.  A transport takes *whole messages* in `write`:
the Linux xenbus driver (``xenbus_file_write``) parses one message per ``write()``
and discards bytes after it, so `FdTransport` never lets one system call span two
messages.  `write` never blocks and never fails half-way (a cancelled request can
therefore not leave half a message on the wire); `drain` waits for the bytes to go.

Which transport to use follows libxenstore (``xs_open``/``get_handle`` in
``tools/libs/store/xs.c``): first the daemon socket (``$XENSTORED_PATH``, else
``$XENSTORED_RUNDIR/socket``, else ``/var/run/xenstored/socket``), then the domain
device (``$XENSTORED_PATH``, else ``/dev/xen/xenbus`` if it exists, else
``/proc/xen/xenbus``).  Whatever the path, ``stat()`` decides: a socket is connected,
anything else is opened ``O_RDWR`` as the xenbus device.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import logging
import os
import stat
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from stubdom.fdio import connect_unix, set_once
from stubdom.xenstore.errors import ConnectionClosed

log = logging.getLogger(__name__)

#: ``XEN_RUN_STORED`` as compiled into Debian's libxenstore.
DEFAULT_RUN_DIR = "/var/run/xenstored"
XENBUS_DEVICES = ("/dev/xen/xenbus", "/proc/xen/xenbus")

_READ_SIZE = 65536


def daemon_socket_path(environ: Mapping[str, str] | None = None) -> str:
    """libxenstore ``xs_daemon_socket()``."""
    env = os.environ if environ is None else environ
    if env.get("XENSTORED_PATH"):
        return env["XENSTORED_PATH"]
    run_dir = env.get("XENSTORED_RUNDIR") or DEFAULT_RUN_DIR
    return os.path.join(run_dir, "socket")


def domain_dev_path(environ: Mapping[str, str] | None = None) -> str:
    """libxenstore ``xs_domain_dev()`` on Linux."""
    env = os.environ if environ is None else environ
    if env.get("XENSTORED_PATH"):
        return env["XENSTORED_PATH"]
    if os.path.exists(XENBUS_DEVICES[0]):
        return XENBUS_DEVICES[0]
    return XENBUS_DEVICES[1]


class Transport(abc.ABC):
    """A bidirectional byte pipe to a xenstore server."""

    #: Human-readable peer, for log and error messages.
    description: str = "xenstore"

    @abc.abstractmethod
    def write(self, message: bytes) -> None:
        """Queue one whole encoded message; raises `ConnectionClosed` if closed."""

    def write_many(self, messages: Sequence[bytes]) -> None:
        """Queue several whole messages, in order (default: `write` each; a stream
        transport sends them in one system call)."""
        for message in messages:
            self.write(message)

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until queued messages are handed to the kernel (flow control)."""

    def must_drain(self) -> bool:
        """Whether `drain` could wait or raise now; False lets a hot path skip it."""
        return True

    @abc.abstractmethod
    async def read(self) -> bytes:
        """Some bytes from the server; ``b""`` at end of stream."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; pending `read`/`drain` calls end."""

    async def wait_closed(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Wait until `close` has finished (default: nothing to wait for)."""

    async def run(self, sink: Callable[[bytes], None]) -> None:
        """Hand everything received to ``sink`` until the end of stream; errors of
        the connection and of ``sink`` are raised (default: `read` in a loop)."""
        while data := await self.read():
            sink(data)


class _StreamProtocol(asyncio.BufferedProtocol):
    """The protocol under `StreamTransport`: hands received bytes to a sink as they
    arrive (`Transport.run`), or buffers them for `StreamTransport.read`.

    A buffered protocol: the socket is read into one buffer kept for the connection,
    where a plain protocol gets a fresh bytes object of asyncio's read size (256 KiB,
    which glibc maps and unmaps again on every read)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.buffer = bytearray()
        self.eof = False
        #: What ended the stream other than a clean EOF (an OSError, or the sink's error).
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._chunk = memoryview(bytearray(_READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def get_buffer(self, _sizehint: int) -> memoryview:
        return self._chunk

    def buffer_updated(self, nbytes: int) -> None:
        # A copy of what arrived: a sink may keep it, and the buffer is read into again.
        data = bytes(self._chunk[:nbytes])
        if self.error is not None:
            return
        if self.sink is None:
            self.buffer += data
            self._wake()
            return
        try:
            self.sink(data)
        except Exception as exc:  # the reader's to report, as a read would have
            self.error = exc
            if self.transport is not None:
                self.transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and not isinstance(exc, ConnectionResetError) and self.error is None:
            self.error = exc
        self._wake()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until something arrives or the stream ends."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        if self._paused and not self.closed.done():
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut


class StreamTransport(Transport):
    """A connected stream socket (the daemon's Unix socket).  In `run`, received bytes
    go to the sink straight from the event loop's callback, with no task between."""

    def __init__(
        self, transport: asyncio.Transport, protocol: _StreamProtocol, description: str
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self.description = description

    @classmethod
    async def connect_unix(cls, path: str) -> StreamTransport:
        loop = asyncio.get_running_loop()
        sock = await connect_unix(path)  # a daemon's full backlog is waited out
        transport, protocol = await loop.create_unix_connection(_StreamProtocol, sock=sock)
        return cls(transport, protocol, f"unix:{path}")

    def write(self, message: bytes) -> None:
        if self._transport.is_closing():
            raise ConnectionClosed(f"{self.description}: connection closed")
        self._transport.write(message)

    def write_many(self, messages: Sequence[bytes]) -> None:
        if self._transport.is_closing():
            raise ConnectionClosed(f"{self.description}: connection closed")
        self._transport.write(messages[0] if len(messages) == 1 else b"".join(messages))

    def must_drain(self) -> bool:
        p = self._protocol
        return p._paused or p.closed.done()

    async def drain(self) -> None:
        await self._protocol.drain()
        p = self._protocol
        if p.closed.done():
            raise ConnectionClosed(f"{self.description}: {p.error or 'connection lost'}")

    async def read(self) -> bytes:
        p = self._protocol
        while True:
            if p.buffer:
                data = bytes(p.buffer)
                p.buffer.clear()
                return data
            if p.error is not None:
                raise p.error
            if p.eof:
                return b""
            await p.wait()

    async def run(self, sink: Callable[[bytes], None]) -> None:
        p = self._protocol
        data = await self.read() if p.buffer else None
        if data:
            sink(data)
        p.sink = sink
        try:
            while p.error is None and not p.eof:
                await p.wait()
        finally:
            p.sink = None
        if p.error is not None:
            raise p.error

    def close(self) -> None:
        self._transport.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(OSError):
            await asyncio.shield(self._protocol.closed)


class BufferedTransport(Transport):
    """A transport that queues what it cannot send yet: `drain` waits for the queue to
    empty (or the transport to fail) and says which.  Subclasses say what is queued."""

    description: str
    _loop: asyncio.AbstractEventLoop
    _drain_waiters: list[asyncio.Future[None]]
    _error: BaseException | None
    _closed: bool

    @abc.abstractmethod
    def _has_unsent(self) -> bool: ...

    def must_drain(self) -> bool:
        return self._has_unsent() or self._error is not None or self._closed

    async def drain(self) -> None:
        if self._has_unsent() and self._error is None and not self._closed:
            fut: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut
        if self._error is not None:
            raise ConnectionClosed(f"{self.description}: {self._error}") from self._error
        if self._closed:
            raise ConnectionClosed(f"{self.description}: connection closed")

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class FdTransport(BufferedTransport):
    """A non-blocking file descriptor: the xenbus character device, or a test pipe.

    Uses ``loop.add_reader``/``add_writer``, so the fd must be pollable (character
    devices, sockets, pipes and ptys are; regular files are not).
    """

    def __init__(self, fd: int, description: str = "fd", *, own: bool = True) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._own = own
        self.description = description
        self._loop = asyncio.get_running_loop()
        self._out: deque[memoryview] = deque()
        self._writer_armed = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._read_waiter: asyncio.Future[None] | None = None
        self._error: OSError | None = None
        self._closed = False

    @classmethod
    async def open_device(cls, path: str) -> FdTransport:
        """Open the xenbus device (or anything else) ``O_RDWR``, like libxenstore."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            return cls(fd, f"device:{path}")
        except BaseException:
            os.close(fd)
            raise

    # -- writing ---------------------------------------------------------------

    def write(self, message: bytes) -> None:
        if self._closed or self._error is not None:
            raise ConnectionClosed(f"{self.description}: connection closed")
        if not message:
            return
        self._out.append(memoryview(message))
        if not self._writer_armed:
            self._flush()

    def _flush(self) -> None:
        while self._out:
            head = self._out[0]
            try:
                n = os.write(self._fd, head)  # one message at most per system call
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(exc)
                return
            if n == len(head):
                self._out.popleft()
            else:
                self._out[0] = head[n:]
        if self._out and not self._writer_armed:
            self._loop.add_writer(self._fd, self._flush)
            self._writer_armed = True
        elif not self._out:
            if self._writer_armed:
                self._loop.remove_writer(self._fd)
                self._writer_armed = False
            self._wake_drainers()

    def _has_unsent(self) -> bool:
        return bool(self._out)

    def _fail(self, exc: OSError) -> None:
        log.debug("%s: I/O error %s", self.description, exc)
        self._error = exc
        self._out.clear()
        if self._writer_armed:
            self._loop.remove_writer(self._fd)
            self._writer_armed = False
        self._wake_drainers()

    # -- reading ---------------------------------------------------------------

    async def read(self) -> bytes:
        while not self._closed:
            try:
                return os.read(self._fd, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno == errno.EIO:  # a pty whose other side hung up
                    return b""
                raise
            fut: asyncio.Future[None] = self._loop.create_future()
            self._read_waiter = fut
            self._loop.add_reader(self._fd, set_once, fut)
            try:
                await fut
            finally:
                self._read_waiter = None
                if not self._closed:
                    self._loop.remove_reader(self._fd)
        return b""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._writer_armed:
            self._loop.remove_writer(self._fd)
            self._writer_armed = False
        self._out.clear()
        self._wake_drainers()
        if self._read_waiter is not None:
            set_once(self._read_waiter)
        if self._own:
            os.close(self._fd)


async def open_path(path: str) -> Transport:
    """libxenstore ``get_handle()``: connect a socket, else open as the xenbus device."""
    st = os.stat(path)
    if stat.S_ISSOCK(st.st_mode):
        return await StreamTransport.connect_unix(path)
    return await FdTransport.open_device(path)


async def open_transport(path: str | None = None) -> Transport:
    """The transport libxenstore's ``xs_open(0)`` would pick (or ``path`` if given)."""
    if path is not None:
        return await open_path(path)
    sock = daemon_socket_path()
    try:
        return await open_path(sock)
    except OSError as first:
        dev = domain_dev_path()
        log.debug("xenstore socket %s unusable (%s); trying %s", sock, first, dev)
        try:
            return await open_path(dev)
        except OSError as second:
            raise OSError(
                second.errno,
                f"cannot reach xenstore: {sock}: {first.strerror or first}; "
                f"{dev}: {second.strerror or second}",
            ) from second


__all__ = [
    "DEFAULT_RUN_DIR",
    "XENBUS_DEVICES",
    "FdTransport",
    "StreamTransport",
    "Transport",
    "daemon_socket_path",
    "domain_dev_path",
    "open_path",
    "open_transport",
]

"""The console frontend a domain program uses: our ``/dev/hvc<n>`` (Mini-OS ``consfront``).

A domain program runs as domain D: its xenstore connection (``$XENSTORED_PATH``) is D's,
so relative paths are under ``/local/domain/D``.  Console n's frontend directory is
``console`` for n = 0 and ``device/console/<n>`` otherwise; its ``backend`` node names
the backend directory, where the backend publishes the unix socket (node ``socket``)
once it is in InitWait.

Closing is what makes file consoles durable: the frontend shuts down its write side
and waits for the backend's EOF, which the backend sends only after everything the
domain wrote is written and fsynced.  So when `Console.close` returns, the data is
on disk (the save stream of console 1 depends on it).

Console 0's directory is read-only for the domain (libxl), so it has no frontend
``state``: the frontend only connects, and the backend treats the connection as the
frontend's state.  Consoles n > 0 walk `FrontendHandshake` as Mini-OS's consfront does:
Connected once connected to the socket (no Initialised step), open once the backend is
Connected too, Closing/Closed on close.

`open_console` is the asyncio API; `SyncConsole` is a blocking one for plain programs
(the stubdomain agent writes the save stream to console 1 and reads the restore
stream from console 2 with it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

from stubdom.host.xenbus import FrontendHandshake, XenbusState
from stubdom.xenstore import (
    RECONNECT,
    Client,
    ConnectionClosed,
    Transaction,
    Watch,
    XenStoreError,
    XenStoreTimeout,
)
from stubdom.xenstore.pipeline import Batch, pipelined

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Guard for opening (backend ready, handshake) and for closing; not a pacing delay.
DEFAULT_TIMEOUT = 30.0
#: Bytes buffered from the backend before we stop reading the socket.
READ_LIMIT = 1 << 20
#: A large write is handed to the socket in pieces of this size (each then waits for
#: room), so that it is never copied whole into the transport's buffer.
WRITE_CHUNK = 1 << 20
#: The socket's send buffer (the kernel caps it at net.core.wmem_max): a saved state
#: then goes out in a few large steps rather than ~200 KiB per turn of the loop.
SEND_BUFFER = 4 << 20


class ConsoleError(Exception):
    """The console cannot be used: no such console, the backend failed or is going."""


class ConsoleClosed(ConsoleError):
    """Writing to a console that is closed or closing."""


def console_dir(n: int) -> str:
    """The frontend directory of console ``n``, relative to the domain's home."""
    return "console" if n == 0 else f"device/console/{n}"


@dataclass
class _Attachment:
    """Where a console lives, as the domain found it."""

    n: int
    fe: str
    be: str
    has_state: bool
    #: Our own state when we found it (UNKNOWN without a state node).
    state: XenbusState = XenbusState.UNKNOWN
    socket_path: str = ""
    watch: Watch | None = None


_HANDSHAKE = FrontendHandshake(skip_initialised=True)


async def _set_state(client: Client, att: _Attachment, state: XenbusState) -> bool:
    """Write our state only while the frontend directory exists (never recreate it)."""

    async def write(t: Transaction) -> bool:
        # Both in one round trip; an abort undoes the write if the directory is gone.
        there, _ = await pipelined(
            t.exists(f"{att.fe}/backend"), t.write(f"{att.fe}/state", state.node())
        )
        if not there:
            await t.abort()
        return there

    written = await client.retry_transaction(write)
    if written:
        log.debug("console %d: frontend %s", att.n, state.name)
    return written


async def _locate(client: Client, n: int) -> _Attachment:
    fe = console_dir(n)
    batch = Batch(client)
    backend, state = batch.read_text(f"{fe}/backend"), batch.read_text(f"{fe}/state")
    await batch.send()
    if backend.value is None:
        raise ConsoleError(f"console {n}: no frontend directory {fe} (or no backend node)")
    has_state = state.value is not None
    return _Attachment(n, fe, backend.value, has_state, XenbusState.parse(state.value))


async def _attach(
    client: Client, n: int, connect: Callable[[str], Awaitable[T]], timeout: float | None
) -> tuple[_Attachment, T]:
    """Find console ``n``, wait for its backend, ``connect`` to its socket, go Connected.

    The watch on the backend set here stays for the console's life (``att.watch``): the
    open console's monitor and `_detach` use it, and `_detach` stops it."""
    att = await _locate(client, n)
    conn: T | None = None
    w = att.watch = client.watch(att.be)
    try:
        async with asyncio.timeout(timeout):
            await w.start()
            await w.get()  # the initial event, which follows the reply at once: the
            # first look below sees all it could announce
            own = att.state
            if att.has_state and own is not XenbusState.INITIALISING:
                # A previous session left Closed (or died mid-way): start over.
                own = XenbusState.INITIALISING
                await _set_state(client, att, own)
            backend, socket_path = await _backend_view(client, att)
            while True:
                if conn is None and socket_path and backend in (
                    XenbusState.INIT_WAIT,
                    XenbusState.CONNECTED,
                ):
                    att.socket_path = socket_path
                    conn = await connect(socket_path)
                    log.debug("console %d: connected to %s", n, socket_path)
                if conn is not None:
                    if not att.has_state:
                        if backend is XenbusState.CONNECTED:
                            return att, conn
                    else:
                        new = _HANDSHAKE.next_state(own, backend)
                        if new is not None and new is not XenbusState.CLOSING:
                            own = new
                            await _set_state(client, att, own)
                            continue  # (the watch holds any change since the view)
                        if own is XenbusState.CONNECTED and backend is XenbusState.CONNECTED:
                            return att, conn
                await w.get()
                backend, socket_path = await _backend_view(client, att)
    except TimeoutError:
        _discard(conn)
        await _stop_watch(att)
        raise ConsoleError(
            f"console {n}: backend {att.be} not ready within {timeout:g} s"
        ) from None
    except BaseException:
        _discard(conn)
        await _stop_watch(att)
        raise


async def _stop_watch(att: _Attachment) -> None:
    if att.watch is not None:
        with contextlib.suppress(XenStoreError, ConnectionClosed, XenStoreTimeout):
            await att.watch.stop()


async def _backend_view(client: Client, att: _Attachment) -> tuple[XenbusState, str | None]:
    """The backend's state and socket; raises once it can never become usable for
    this open.

    One batch, as Mini-OS reads: no transaction, since any change after these reads
    fires our watch on the backend directory and we look again."""
    batch = Batch(client)
    state = batch.read_text(f"{att.be}/state")
    online = batch.read_text(f"{att.be}/online")
    error = batch.read_text(f"{att.be}/error")
    socket_path = batch.read_text(f"{att.be}/socket")
    await batch.send()
    if online.value is None:
        raise ConsoleError(f"console {att.n}: backend {att.be} is gone")
    if error.value:
        raise ConsoleError(f"console {att.n}: backend failed: {error.value}")
    if online.value.strip() != "1":
        raise ConsoleError(f"console {att.n}: backend {att.be} is being removed")
    return XenbusState.parse(state.value), socket_path.value


async def _detach(client: Client, att: _Attachment, timeout: float | None) -> None:
    """The xenbus half of closing: Closing, then Closed once the backend follows; then
    the watch `_attach` set goes."""
    try:
        if att.has_state and att.watch is not None:
            await _close_handshake(client, att, att.watch, timeout)
    finally:
        await _stop_watch(att)


async def _close_handshake(
    client: Client, att: _Attachment, w: Watch, timeout: float | None
) -> None:
    try:
        async with asyncio.timeout(timeout):
            batch = Batch(client)
            own_raw, backend_raw = (batch.read_text(f"{att.fe}/state"),
                                    batch.read_text(f"{att.be}/state"))
            await batch.send()
            own, backend = XenbusState.parse(own_raw.value), XenbusState.parse(backend_raw.value)
            while True:
                new = _HANDSHAKE.next_state(own, backend, closing=True)
                if new is not None:
                    own = new
                    if not await _set_state(client, att, own):
                        return  # the toolstack removed the device already
                    continue
                if own is XenbusState.CLOSED and backend in (
                    XenbusState.CLOSED,
                    XenbusState.UNKNOWN,
                ):
                    return
                await w.get()
                backend = XenbusState.parse(await client.read_optional(f"{att.be}/state"))
    except TimeoutError:
        log.warning("console %d: backend did not close within %g s", att.n, timeout or 0)
    except XenStoreError as err:
        # The domain's tree went away under us (destroy): nothing left to close.
        log.debug("console %d: frontend gone while closing: %s", att.n, err)


def _discard(conn: object) -> None:
    if isinstance(conn, socket.socket):
        conn.close()
    elif isinstance(conn, _ConsoleProtocol) and conn.transport is not None:
        conn.transport.close()


# -- asyncio -------------------------------------------------------------------------------


class _ConsoleProtocol(asyncio.Protocol):
    """Our own stream buffer, so `Console.close` can wait for EOF while a read waits too."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = asyncio.Event()
        self.lost = False
        self.discard = False
        self._changed = asyncio.Event()
        self._paused = False
        self._wanted = 0
        self._drained = asyncio.Event()
        self._drained.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return
        self.buffer += data
        self._changed.set()
        limit = max(READ_LIMIT, self._wanted)
        if len(self.buffer) > limit and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof.set()
        self._changed.set()
        return True  # keep our write side open: a pipe console ends input before output

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.eof.set()
        self._changed.set()
        self._drained.set()

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    async def wait_data(self, wanted: int) -> None:
        self._wanted = wanted  # a read larger than the limit may fill the buffer beyond it
        try:
            while len(self.buffer) < wanted and not self.eof.is_set():
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._wanted = 0

    def take(self, n: int) -> bytes:
        with memoryview(self.buffer) as view:
            data = bytes(view[:n])  # one copy (a bytearray slice would be a second)
        del self.buffer[:n]
        if self._paused and len(self.buffer) <= READ_LIMIT // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def drop_input(self) -> None:
        """From now on we only wait for EOF: drop what is buffered and keep reading."""
        self.discard = True
        self.buffer.clear()
        self._changed.set()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        await self._drained.wait()


class Console:
    """An open console: bytes in and out, and a close that means "durable".

    While open it watches the backend: when the toolstack removes the device (backend
    Closing, ``online`` = 0) the console closes itself, so a pending `read` ends with
    EOF and later writes raise `ConsoleClosed`.
    """

    def __init__(
        self, client: Client, att: _Attachment, proto: _ConsoleProtocol, timeout: float | None
    ) -> None:
        self.client = client
        self.n = att.n
        self.socket_path = att.socket_path
        self._att = att
        self._proto = proto
        self._timeout = timeout
        self._closing: asyncio.Task[None] | None = None
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch_backend(), name=f"console {att.n} monitor"
        )

    @property
    def closed(self) -> bool:
        return self._closing is not None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` and wait until the socket buffer has room again."""
        with memoryview(data) as whole, whole.cast("B") as view:
            for at in range(0, max(view.nbytes, 1), WRITE_CHUNK):
                self.send(view[at : at + WRITE_CHUNK])
                await self.drain()

    def send(self, data: bytes | memoryview) -> None:
        """Queue ``data`` on the socket without waiting: for short writes from a callback
        (a log line), where `write`'s coroutine and drain would cost more than the
        write.  `drain` waits for room, `close` for all of it to arrive."""
        transport = self._proto.transport
        if self._closing is not None or self._proto.lost or transport is None:
            raise ConsoleClosed(f"console {self.n} is closed")
        transport.write(data)

    async def drain(self) -> None:
        """Until the socket buffer has room again."""
        await self._proto.drain()

    async def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes; b"" at EOF."""
        await self._proto.wait_data(1)
        return self._proto.take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or `asyncio.IncompleteReadError` at EOF."""
        await self._proto.wait_data(n)
        if len(self._proto.buffer) < n:
            partial = self._proto.take(n)
            raise asyncio.IncompleteReadError(partial, n)
        return self._proto.take(n)

    async def readline(self) -> bytes:
        """Up to and including the next newline (or what is left at EOF)."""
        while True:
            idx = self._proto.buffer.find(b"\n")
            if idx >= 0:
                return self._proto.take(idx + 1)
            if self._proto.eof.is_set():
                return self._proto.take(len(self._proto.buffer))
            await self._proto.wait_data(len(self._proto.buffer) + 1)

    async def close(self) -> None:
        """Shut down our side, wait for the backend's EOF (durable), then Closing/Closed."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        current = asyncio.current_task()
        if self._monitor is not current:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        proto = self._proto
        transport = proto.transport
        try:
            if transport is not None and not proto.lost:
                with contextlib.suppress(OSError, RuntimeError):
                    if transport.can_write_eof():
                        transport.write_eof()
                proto.drop_input()
                try:
                    async with asyncio.timeout(self._timeout):
                        await proto.eof.wait()
                except TimeoutError:
                    log.warning("console %d: no EOF from the backend after closing", self.n)
        finally:
            if transport is not None:
                transport.close()
        await _detach(self.client, self._att, self._timeout)
        log.debug("console %d closed", self.n)

    async def _watch_backend(self) -> None:
        """Close when the backend goes away or closes under us (device removal)."""
        w = self._att.watch
        if w is None:
            return
        be = self._att.be
        try:
            async for _ in w:
                batch = Batch(self.client)
                state, online = batch.read_text(f"{be}/state"), batch.read_text(f"{be}/online")
                await batch.send()
                if (
                    XenbusState.parse(state.value) in (XenbusState.CLOSING, XenbusState.CLOSED)
                    or online.value != "1"
                ):
                    log.info("console %d: backend closing, closing too", self.n)
                    if self._closing is None:
                        self._closing = asyncio.get_running_loop().create_task(self._close())
                    return
        except (ConnectionClosed, XenStoreError, XenStoreTimeout) as err:
            log.debug("console %d: backend monitor ended: %s", self.n, err)

    async def __aenter__(self) -> Console:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def connect_console(
    client: Client, n: int, *, timeout: float | None = DEFAULT_TIMEOUT
) -> Console:
    """Open console ``n`` of the domain ``client`` belongs to; close it when done."""
    loop = asyncio.get_running_loop()

    async def connect(path: str) -> _ConsoleProtocol:
        _, proto = await loop.create_unix_connection(_ConsoleProtocol, path)
        return proto

    att, proto = await _attach(client, n, connect, timeout)
    return Console(client, att, proto, timeout)


@contextlib.asynccontextmanager
async def open_console(
    client: Client, n: int, *, timeout: float | None = DEFAULT_TIMEOUT
) -> AsyncIterator[Console]:
    """``async with open_console(client, n) as con``: connected on entry, closed on exit."""
    con = await connect_console(client, n, timeout=timeout)
    try:
        yield con
    finally:
        await con.close()


# -- blocking ------------------------------------------------------------------------------


class _LoopThread:
    """A private event loop in a daemon thread, for the xenstore side of `SyncConsole`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result()

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


class SyncConsole:
    """Console ``n`` for a plain blocking program: ``with SyncConsole(1) as con: ...``.

    The xenstore side runs in a private loop thread; the data path is an ordinary
    blocking socket (`sock`), usable with ``makefile`` too.  ``xenstored_path`` defaults
    to libxenstore's lookup (``$XENSTORED_PATH``).  Unlike `Console` it does not watch
    for removal while open: the toolstack's removal then waits for `close`, or times out
    and forces it.
    """

    def __init__(
        self,
        n: int,
        *,
        xenstored_path: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.n = n
        self.timeout = timeout
        self._runner = _LoopThread()
        self._att: _Attachment | None = None
        self._sock: socket.socket | None = None
        try:
            self._client: Client = self._runner.call(
                Client.connect(xenstored_path, reconnect=RECONNECT)
            )
            self._att, self._sock = self._runner.call(self._open())
        except BaseException:
            self._shutdown_client()
            raise

    async def _open(self) -> tuple[_Attachment, socket.socket]:
        loop = asyncio.get_running_loop()

        async def connect(path: str) -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
            sock.setblocking(True)
            return sock

        return await _attach(self._client, self.n, connect, self.timeout)

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            raise ConsoleClosed(f"console {self.n} is closed")
        return self._sock

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes; b"" at EOF."""
        return self.sock.recv(n)

    def readexactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data = self.sock.recv(n - len(buf))
            if not data:
                raise EOFError(f"console {self.n}: EOF after {len(buf)} of {n} bytes")
            buf += data
        return bytes(buf)

    def close(self) -> None:
        """Shut down our side, wait for the backend's EOF (durable), then Closing/Closed."""
        sock, self._sock = self._sock, None
        try:
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(self.timeout)
                    while sock.recv(65536):
                        pass
                except TimeoutError:
                    log.warning("console %d: no EOF from the backend after closing", self.n)
                except OSError as err:
                    log.debug("console %d: closing: %s", self.n, err)
                finally:
                    sock.close()
            if self._att is not None:
                att, self._att = self._att, None
                self._runner.call(_detach(self._client, att, self.timeout))
        finally:
            self._shutdown_client()

    def _shutdown_client(self) -> None:
        if self._runner.loop.is_closed():
            return
        client = getattr(self, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                self._runner.call(client.close())
        self._runner.stop()

    def __enter__(self) -> SyncConsole:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "DEFAULT_TIMEOUT",
    "Console",
    "ConsoleClosed",
    "ConsoleError",
    "SyncConsole",
    "connect_console",
    "console_dir",
    "open_console",
]

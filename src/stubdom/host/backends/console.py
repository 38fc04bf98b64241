"""dom0's console backend: the pvqemu's ``xen_console`` for domains that are processes.

A console's "ring" is a unix socket at ``<run_dir>/consoles/<D>/<n>``; the backend writes
that path into its directory as node ``socket`` (the domain may read the backend
directory, as it reads ``ring-ref`` in Xen).  The frontend ``output`` node says what the
console is connected to, as qemu-trad's ``con_init`` reads it (absent means ``pty``):

* ``file:PATH`` -- opened at backend initialisation like ``qemu_chr_open_file_out``
  (``O_WRONLY|O_TRUNC|O_CREAT|O_APPEND``, 0666) and appended to across reconnects.
  When the domain shuts down its side of the socket the backend writes everything,
  fsyncs, and only then closes its own side: the domain's close returning means the
  data is on disk, which the save stream (console 1) relies on.
* ``pipe:PATH`` -- PATH (a FIFO or a regular file) is streamed to the domain, then the
  backend shuts down its write side so the domain reads EOF (the restore stream,
  console 2).  What the domain writes there is discarded.
* ``pty`` -- a pty pair; the slave's path goes into the frontend ``tty`` node (as
  xenconsoled and qemu write it) and bytes are bridged both ways.
* ``null`` -- writes are discarded, nothing is ever read.

The toolstack half (``libxl__device_console_add``) is `stubdom.toolstack.devices`.
The xenbus state machine is `BackendHandshake`;
console 0's frontend directory is read-only for the domain, so its frontend has no
``state`` node and the backend counts a live socket connection as a connected frontend
(qemu's console backend ignores the frontend state altogether, DEVOPS_FLAG_IGNORE_STATE).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import socket
import stat
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from stubdom.fdio import wait_fd, write_fd_all
from stubdom.host.xenbus import (
    BackendHandshake,
    XenbusState,
    backend_path,
    backend_root,
    frontend_path,
)
from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    NoEntry,
    Transaction,
    Watch,
    XenStoreError,
    XenStoreTimeout,
)
from stubdom.xenstore.pipeline import Batch, pipelined

log = logging.getLogger(__name__)


#: What qemu-trad's ``con_init`` uses when the frontend has no ``output`` node.
DEFAULT_OUTPUT = "pty"
CHUNK = 65536
#: Reads of a ``file:`` console's connection and of a ``pipe:`` console's regular file:
#: a saved state is hundreds of MB, and each read costs a turn of the event loop (and,
#: for the file, a thread hop).
BULK_CHUNK = 1 << 20
#: A connection's send buffer (capped by the kernel at net.core.wmem_max): a restored
#: state goes to the domain in a few large steps rather than ~200 KiB per loop turn.
SEND_BUFFER = 4 << 20


def console_frontend_path(domid: int, n: int) -> str:
    """``/local/domain/D/console`` for console 0, else ``/local/domain/D/device/console/n``."""
    return frontend_path(domid, "console", n)


def console_backend_path(domid: int, n: int, backend_domid: int = 0) -> str:
    return backend_path(domid, "console", n, backend_domid)


def console_socket_path(run_dir: Path, domid: int, n: int) -> Path:
    """Where the backend listens for console ``n`` of domain ``domid``."""
    return Path(run_dir) / "consoles" / str(domid) / str(n)


# -- output specs --------------------------------------------------------------------------


class Mode(enum.Enum):
    FILE = "file"
    PIPE = "pipe"
    PTY = "pty"
    NULL = "null"


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    mode: Mode
    path: str = ""

    @classmethod
    def parse(cls, raw: str | None) -> OutputSpec:
        """The frontend ``output`` node; ValueError names what is not supported."""
        spec = DEFAULT_OUTPUT if raw is None else raw
        for mode in (Mode.FILE, Mode.PIPE):
            prefix = mode.value + ":"
            if spec.startswith(prefix):
                if not spec[len(prefix) :]:
                    raise ValueError(f"console output {spec!r} names no path")
                return cls(mode, spec[len(prefix) :])
        if spec in ("pty", "null"):
            return cls(Mode(spec))
        raise ValueError(f"unsupported console output {spec!r} (file:PATH, pipe:PATH, pty, null)")


class _PipeSource:
    """The ``pipe:`` input, opened once at initialisation and shared by reconnects.

    A FIFO is opened O_NONBLOCK (never blocks the loop, needs no writer yet) and read
    only once epoll reports it: Linux reports nothing until a writer has come, so a
    read of 0 bytes after that is the writer's EOF, not "no writer yet".
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fifo = stat.S_ISFIFO(os.stat(path).st_mode)
        self.fd = os.open(path, os.O_RDONLY | (os.O_NONBLOCK if self.fifo else 0))
        self.eof = False
        self.lock = asyncio.Lock()

    async def read(self) -> bytes:
        if self.eof:
            return b""
        if self.fifo:
            while True:
                await wait_fd(self.fd)
                try:
                    data = os.read(self.fd, CHUNK)
                    break
                except BlockingIOError:
                    continue
        else:
            data = await asyncio.to_thread(os.read, self.fd, BULK_CHUNK)
        self.eof = not data
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Pty:
    """A pty pair in raw mode (like xenconsoled's cfmakeraw); the backend keeps the slave
    open so the master never reads EIO while nobody else has the slave open."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.lock = asyncio.Lock()

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- the backend ---------------------------------------------------------------------------


class _Exit(enum.Enum):
    GONE = "gone"  # the backend directory was removed
    RESTART = "restart"  # the toolstack wrote a fresh device over ours


class ConsoleDevice:
    """One console of one domain: its data path and its side of the handshake.

    All xenstore decisions run in the device's own task, one `_step` at a time, so
    watch events only ever "kick" it; a step that writes reads and writes in one
    transaction so a concurrent toolstack write (removal) is never overwritten with a
    stale state.
    """

    def __init__(self, backend: ConsoleBackend, domid: int, n: int) -> None:
        self.backend = backend
        self.client = backend.client
        self.domid = domid
        self.n = n
        self.be = console_backend_path(domid, n, backend.backend_domid)
        self.fe = ""
        self.socket_path = console_socket_path(backend.run_dir, domid, n)
        self.spec: OutputSpec | None = None
        self.failed: str | None = None
        self.exit: _Exit | None = None
        self._announced = False  # we moved the backend past Initialising
        self._kick = asyncio.Event()
        self._kick.set()
        #: The frontend changed since the last step: it likely calls for a write.
        self._frontend_moved = False
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._file_fd: int | None = None
        self._pipe: _PipeSource | None = None
        self._pty: _Pty | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"console {domid}/{n}")

    def __repr__(self) -> str:
        return f"<ConsoleDevice {self.domid}/{self.n} {self.spec}>"

    def kick(self) -> None:
        self._kick.set()

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def _run(self) -> None:
        watch = None
        try:
            try:
                self.fe = (await self.client.read(f"{self.be}/frontend")).decode()
            except NoEntry:
                self.exit = _Exit.GONE
                return
            watch = await self.client.watch(self.fe)
            forward = asyncio.get_running_loop().create_task(self._forward(watch))
            try:
                await self._setup()
                while self.exit is None:
                    await self._kick.wait()
                    self._kick.clear()
                    moved, self._frontend_moved = self._frontend_moved, False
                    await self._step(glance=not moved)
            finally:
                forward.cancel()
                await asyncio.gather(forward, return_exceptions=True)
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("console %d of domain %d: backend failed", self.n, self.domid)
        finally:
            if watch is not None:
                with contextlib.suppress(XenStoreError, ConnectionClosed, XenStoreTimeout):
                    await watch.stop()
            await self._teardown()

    async def _forward(self, watch: Watch) -> None:
        async for _ in watch:
            self._frontend_moved = True
            self.kick()

    # -- setup and teardown ------------------------------------------------------------

    async def _setup(self) -> None:
        """Open what ``output`` names and listen, like qemu's ``con_init`` at backend init."""
        try:
            online = (await self.client.read(f"{self.be}/online")).strip() == b"1"
        except NoEntry:
            self.exit = _Exit.GONE
            return
        if not online:
            return  # removed before we got to it: the handshake closes it at once
        try:
            raw: bytes | None = await self.client.read(f"{self.fe}/output")
        except NoEntry:
            raw = None
        try:
            self.spec = OutputSpec.parse(None if raw is None else raw.decode())
            await self._open_output(self.spec)
            await self._listen()
        except (ValueError, OSError) as err:
            await self._fail(str(err))
            return
        log.info(
            "console %d of domain %d: %s%s on %s",
            self.n,
            self.domid,
            self.spec.mode.value,
            f":{self.spec.path}" if self.spec.path else "",
            self.socket_path,
        )

        async def announce(t: Transaction) -> None:
            if not await t.exists(f"{self.be}/frontend"):
                return
            await t.write(f"{self.be}/socket", str(self.socket_path))
            if self._pty is not None and await t.exists(f"{self.fe}/backend"):
                await t.write(f"{self.fe}/tty", self._pty.path)

        await self.client.retry_transaction(announce)

    async def _open_output(self, spec: OutputSpec) -> None:
        if spec.mode is Mode.FILE:
            flags = os.O_WRONLY | os.O_TRUNC | os.O_CREAT | os.O_APPEND
            self._file_fd = os.open(spec.path, flags, 0o666)
        elif spec.mode is Mode.PIPE:
            self._pipe = _PipeSource(spec.path)
        elif spec.mode is Mode.PTY:
            self._pty = _Pty()

    async def _listen(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=BULK_CHUNK
        )

    async def _fail(self, why: str) -> None:
        """Log it, say it in the backend's ``error`` node, and close the device for good."""
        self.failed = why
        log.error("console %d of domain %d: %s", self.n, self.domid, why)

        async def mark(t: Transaction) -> None:
            if await t.exists(f"{self.be}/frontend"):
                await t.write(f"{self.be}/error", why)
                await t.write(f"{self.be}/state", XenbusState.CLOSED.node())

        await self.client.retry_transaction(mark)

    async def _close_data_path(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                self.socket_path.unlink()
            with contextlib.suppress(OSError):
                self.socket_path.parent.rmdir()  # only once the domain's last console went
        # Close the connections rather than cancel their handlers: each then sees EOF and
        # finishes as usual (a file console fsyncs what it got).
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*list(self._conns), return_exceptions=True)
        if self._file_fd is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.fsync, self._file_fd)
            os.close(self._file_fd)
            self._file_fd = None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._pty is not None:
            self._pty.close()
            self._pty = None

    async def _teardown(self) -> None:
        await self._close_data_path()
        log.debug("console %d of domain %d: torn down (%s)", self.n, self.domid, self.exit)

    # -- the handshake -----------------------------------------------------------------

    def _frontend(self, raw: str | None) -> XenbusState:
        if raw is None:
            # Console 0: no state node (read-only directory); a live connection is it.
            return XenbusState.CONNECTED if self._conns else XenbusState.UNKNOWN
        return XenbusState.parse(raw)

    def _next(
        self, raw_own: str | None, raw_online: str | None, raw_frontend: str | None
    ) -> tuple[_Exit | None, XenbusState, bool, bool]:
        """What one view of the nodes (None: absent) calls for: (exit, our state,
        online, whether our state node must be written)."""
        if raw_own is None or raw_online is None:
            return _Exit.GONE, XenbusState.UNKNOWN, False, False
        frontend = self._frontend(raw_frontend)
        own = XenbusState.parse(raw_own)
        online = raw_online.strip() == "1"
        if own is XenbusState.INITIALISING and self._announced:
            return _Exit.RESTART, own, online, False
        if self.failed is not None:
            return None, XenbusState.CLOSED, online, own is not XenbusState.CLOSED
        start = own
        for _ in range(8):  # follow the transitions this view allows, e.g. Closing->Closed
            new = self.backend.handshake.next_state(own, frontend, online, ready=True)
            if new is None:
                break
            own = new
        return None, own, online, own is not start

    async def _glance(self) -> tuple[XenbusState, bool] | None:
        """A step that changes nothing, decided on one batch of plain reads: most events
        are our own state writes coming back.  None: something is to be done, which a
        transaction then decides and does (a concurrent change fires another event)."""
        batch = Batch(self.client)
        own = batch.read_text(f"{self.be}/state")
        online = batch.read_text(f"{self.be}/online")
        frontend = batch.read_text(f"{self.fe}/state")
        await batch.send()
        exit_, state, is_online, write = self._next(own.value, online.value, frontend.value)
        return None if exit_ is not None or write else (state, is_online)

    async def _step(self, glance: bool = True) -> None:
        """One look at the handshake: a `_glance` first unless the frontend moved."""

        async def decide(t: Transaction) -> tuple[_Exit | None, XenbusState, bool]:
            raw_own, raw_online, raw_frontend = await pipelined(
                t.read_text(f"{self.be}/state"),
                t.read_text(f"{self.be}/online"),
                t.read_text(f"{self.fe}/state"),
            )
            exit_, own, online, write = self._next(raw_own, raw_online, raw_frontend)
            if write:
                # The commit goes with the write, one round trip: had the write failed,
                # the commit would carry nothing, and the write's error is raised.
                await pipelined(t.write(f"{self.be}/state", own.node()), t.commit())
            return exit_, own, online

        seen = await self._glance() if glance else None
        if seen is not None:
            own, online = seen
        else:
            exit_, own, online = await self.client.retry_transaction(decide)
            if exit_ is not None:
                self.exit = exit_
                return
        if own is not XenbusState.INITIALISING:
            self._announced = True
        if own is XenbusState.CLOSED and not online and self._server is not None:
            log.info("console %d of domain %d: closed for removal", self.n, self.domid)
            await self._close_data_path()

    # -- the data path -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        self.kick()
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        try:
            if self.spec is None:
                return
            serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] = {
                Mode.FILE: self._serve_file,
                Mode.PIPE: self._serve_pipe,
                Mode.PTY: self._serve_pty,
                Mode.NULL: self._serve_null,
            }[self.spec.mode]
            await serve(reader, writer)
        except (ConnectionError, OSError) as err:
            log.info("console %d of domain %d: connection lost: %s", self.n, self.domid, err)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self._conns.discard(task)
            self._writers.discard(writer)
            self.kick()

    async def _serve_file(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Append until the domain's EOF; fsync before our side closes (durability)."""
        fd = self._file_fd
        assert fd is not None
        try:
            while data := await reader.read(BULK_CHUNK):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            await asyncio.to_thread(os.fsync, fd)

    async def _serve_pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        feeder = asyncio.get_running_loop().create_task(self._feed(writer))
        try:
            discarded = 0
            while data := await reader.read(CHUNK):
                discarded += len(data)
            if discarded:
                log.debug(
                    "console %d of domain %d: discarded %d bytes", self.n, self.domid, discarded
                )
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    async def _feed(self, writer: asyncio.StreamWriter) -> None:
        pipe = self._pipe
        assert pipe is not None
        async with pipe.lock:
            while data := await pipe.read():
                writer.write(data)
                await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        log.debug("console %d of domain %d: %s fed to EOF", self.n, self.domid, pipe.path)

    async def _serve_pty(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pty = self._pty
        assert pty is not None
        async with pty.lock:  # one domain connection reads the master at a time
            pump = asyncio.get_running_loop().create_task(self._pump_pty(pty, writer))
            try:
                while data := await reader.read(CHUNK):
                    await write_fd_all(pty.master, data)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    async def _pump_pty(self, pty: _Pty, writer: asyncio.StreamWriter) -> None:
        while True:
            await wait_fd(pty.master)
            try:
                data = os.read(pty.master, CHUNK)
            except BlockingIOError:
                continue
            if not data:
                return
            writer.write(data)
            await writer.drain()

    async def _serve_null(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(CHUNK):
            pass


class ConsoleBackend:
    """Serves every console under ``/local/domain/<backend_domid>/backend/console``.

    One watch on that directory finds devices appearing, changing and going; each
    device also watches its frontend directory.  A device that fails never stops the
    others, and a domain whose directories vanish just has its consoles torn down.
    """

    def __init__(self, client: Client, run_dir: Path, *, backend_domid: int = 0) -> None:
        self.client = client
        self.run_dir = Path(run_dir)
        self.backend_domid = backend_domid
        self.root = f"{backend_root(backend_domid)}/console"
        self.handshake = BackendHandshake()
        self.devices: dict[tuple[int, int], ConsoleDevice] = {}
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        (self.run_dir / "consoles").mkdir(parents=True, exist_ok=True)
        watch = await self.client.watch(self.root)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch(watch), name="console-backend watch"),
            loop.create_task(self._dispatch(), name="console-backend"),
        ]
        log.info("console backend watching %s", self.root)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        devices = list(self.devices.values())
        self.devices.clear()
        for dev in devices:
            dev.task.cancel()
        await asyncio.gather(*(d.task for d in devices), return_exceptions=True)

    async def _watch(self, watch: Watch) -> None:
        try:
            async for event in watch:
                self._queue.put_nowait(event.path)
        finally:
            with contextlib.suppress(XenStoreError, ConnectionClosed, XenStoreTimeout):
                await watch.stop()

    def _key(self, path: str) -> tuple[int, int] | None:
        rest = path[len(self.root) :].strip("/").split("/")
        if len(rest) < 2:
            return None
        try:
            return int(rest[0]), int(rest[1])
        except ValueError:
            return None

    async def _dispatch(self) -> None:
        while True:
            path = await self._queue.get()
            if path is None:
                continue
            try:
                key = self._key(path)
                if key is None:
                    await self._rescan()
                else:
                    await self._touch(key)
            except (XenStoreError, XenStoreTimeout) as err:
                log.warning("console backend: handling %s: %s", path, err)

    async def _rescan(self) -> None:
        seen: set[tuple[int, int]] = set()
        try:
            domains = await self.client.directory(self.root)
        except NoEntry:
            domains = []
        for d in domains:
            try:
                devs = await self.client.directory(f"{self.root}/{d}")
            except NoEntry:
                continue
            for n in devs:
                if d.isdigit() and n.isdigit():
                    seen.add((int(d), int(n)))
        for key in seen | set(self.devices):
            await self._touch(key)

    async def _touch(self, key: tuple[int, int]) -> None:
        dev = self.devices.get(key)
        if dev is not None and dev.exit is None and not dev.task.done():
            dev.kick()
            return
        if dev is not None:
            await asyncio.gather(dev.task, return_exceptions=True)  # free the socket path
            if self.devices.get(key) is dev:
                del self.devices[key]
        domid, n = key
        be = console_backend_path(domid, n, self.backend_domid)
        if not await self.client.exists(f"{be}/frontend"):
            return
        new = ConsoleDevice(self, domid, n)
        self.devices[key] = new
        new.task.add_done_callback(lambda _t: self._ended(key, new))

    def _ended(self, key: tuple[int, int], dev: ConsoleDevice) -> None:
        if self.devices.get(key) is not dev:
            return
        if dev.exit is _Exit.RESTART:  # the toolstack wrote a new device over this one
            self._queue.put_nowait(f"{self.root}/{key[0]}/{key[1]}")
        elif dev.exit is _Exit.GONE:
            del self.devices[key]

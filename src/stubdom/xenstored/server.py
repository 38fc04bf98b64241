"""The asyncio shell around `XenStored`: the dom0 socket and one socket per domain.

A connection on the main socket is dom0 (privileged).  When dom0 INTRODUCEs domain D,
the server listens on ``<socket>.d/<D>``; every connection accepted there acts as
domain D.  RELEASE or the domain's death closes those connections and removes the
socket.  The shell only moves bytes: all decisions are the core's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Coroutine
from pathlib import Path

from stubdom.wire.packet import DecodeError, PacketDecoder, encode
from stubdom.xenstored.core import Connection, DomainIntroduced, DomainReleased, XenStored
from stubdom.xenstored.trace import PacketTrace

log = logging.getLogger(__name__)

#: Stop reading from an unprivileged client whose unread output exceeds this.
_UNPRIV_HIGH_WATER = 64 * 1024


class XenStoreServer:
    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        core: XenStored | None = None,
        trace: PacketTrace | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.core = core or XenStored()
        self.trace = trace
        self._main: asyncio.Server | None = None
        self._domain_servers: dict[int, socket.socket] = {}
        self._domain_asyncio: dict[int, asyncio.Server] = {}
        self._writers: dict[Connection, asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    @property
    def domain_dir(self) -> Path:
        return Path(str(self.socket_path) + ".d")

    def domain_socket(self, domid: int) -> Path:
        return self.domain_dir / str(domid)

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._main = await asyncio.start_unix_server(
            lambda r, w: self._client(r, w, 0), path=str(self.socket_path)
        )
        os.chmod(self.socket_path, 0o600)
        self.domain_dir.mkdir(exist_ok=True)
        for stale in self.domain_dir.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
        log.info("xenstored listening on %s", self.socket_path)

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        if self._main is not None:
            self._main.close()
        for domid in list(self._domain_servers):
            self._close_domain_socket(domid)
        for w in list(self._writers.values()):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with contextlib.suppress(OSError):
            self.domain_dir.rmdir()
        self._closed.set()

    # -- clients --------------------------------------------------------------------

    async def _client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domid: int
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        if domid != 0 and self.core.introduced(domid) is None:
            writer.close()
            return
        conn = self.core.connect(domid, privileged=domid == self.core.priv_domid)
        self._writers[conn] = writer
        decoder = PacketDecoder()
        log.debug("%r connected", conn)
        try:
            while not conn.closed:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    decoder.feed(data)
                except DecodeError as e:
                    log.warning("%r: %s; closing the connection", conn, e)
                    break
                for packet in decoder:
                    if self.trace:
                        self.trace.record("in", conn.cid, conn.domid, packet)
                    self.core.handle(conn, packet)
                    # Domain sockets exist before the INTRODUCE reply leaves.
                    self._apply_notifications()
                    self._flush()
                    if conn.closed:
                        break
                if not conn.privileged and not conn.closed:
                    transport = writer.transport
                    if transport.get_write_buffer_size() > _UNPRIV_HIGH_WATER:
                        await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.core.disconnect(conn)
            self._writers.pop(conn, None)
            writer.close()
            if task is not None:
                self._tasks.discard(task)
            log.debug("%r disconnected", conn)

    def _flush(self) -> None:
        for conn in self.core.pending():
            writer = self._writers.get(conn)
            packets = conn.take_output()
            if writer is None or writer.is_closing():
                continue
            if self.trace:
                for p in packets:
                    self.trace.record("out", conn.cid, conn.domid, p)
            writer.write(b"".join(encode(p) for p in packets))

    def _apply_notifications(self) -> None:
        while self.core.notifications:
            note = self.core.notifications.popleft()
            if isinstance(note, DomainIntroduced):
                self._open_domain_socket(note.domid)
            elif isinstance(note, DomainReleased):
                self._close_domain_socket(note.domid)
        # Connections the core closed (released domains) lose their sockets too.
        for conn, writer in list(self._writers.items()):
            if conn.closed:
                writer.close()
                self._writers.pop(conn, None)

    def _open_domain_socket(self, domid: int) -> None:
        if domid in self._domain_servers:
            return
        path = self.domain_socket(domid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Bind synchronously: a client may connect as soon as it reads the reply.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(64)
        sock.setblocking(False)
        self._domain_servers[domid] = sock
        self._spawn(self._serve_domain(domid, sock))
        log.info("domain %d introduced; its xenstore socket is %s", domid, path)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_domain(self, domid: int, sock: socket.socket) -> None:
        server = await asyncio.start_unix_server(lambda r, w: self._client(r, w, domid), sock=sock)
        if self._domain_servers.get(domid) is not sock:  # released meanwhile
            server.close()
            return
        self._domain_asyncio[domid] = server

    def _close_domain_socket(self, domid: int) -> None:
        server = self._domain_asyncio.pop(domid, None)
        if server is not None:
            server.close()
        sock = self._domain_servers.pop(domid, None)
        if sock is not None:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.domain_socket(domid).unlink()
        log.info("domain %d released", domid)

    def domain_socket_ready(self, domid: int) -> bool:
        return domid in self._domain_servers


async def run_server(server: XenStoreServer, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled or until `XenStoreServer.close` is called."""
    await server.start()
    if ready is not None:
        ready.set()
    try:
        await server.serve_forever()
    finally:
        await server.close()

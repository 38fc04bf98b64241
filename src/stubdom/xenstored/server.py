"""The asyncio shell around `XenStored`: the dom0 socket and one socket per domain.

A connection on the main socket is dom0 (privileged).  When dom0 INTRODUCEs domain D,
the server listens on ``<socket>.d/<D>``; every connection accepted there acts as
domain D.  RELEASE or the domain's death closes those connections and removes the
socket.  The shell only moves bytes: all decisions are the core's.

Clients are `asyncio.BufferedProtocol` objects rather than streams: a request is handled
inside ``buffer_updated`` and its reply written at once, with no task switch between.
The socket is read into one buffer the server shares (a read is consumed before the next
one starts): asyncio's plain ``data_received`` path allocates a fresh 256 KiB bytes
object per read, which glibc may serve with mmap/mremap/munmap, a cost that showed up
as +30 µs per request once a thousand connections were open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from pathlib import Path
from typing import cast

from stubdom.fdio import remove_stale_socket
from stubdom.ratelimit import LimitedLog
from stubdom.wire.constants import Op
from stubdom.wire.packet import DecodeError, PacketDecoder, encode
from stubdom.xenstored.connection import Connection
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.errors import DomainIntroduced, DomainReleased
from stubdom.xenstored.persist import DurableState
from stubdom.xenstored.trace import PacketTrace

log = logging.getLogger(__name__)

#: An unprivileged client whose unread output exceeds this is not read from until it
#: catches up (cx stops reading a domain with too many outstanding replies).
UNPRIV_HIGH_WATER = 64 * 1024
#: Replies to requests that arrived together go out in one send, at most this many.
FLUSH_BATCH = 32

#: Bytes read from a socket at a time (into the buffer shared by all clients).
READ_SIZE = 64 * 1024


class _ClientProtocol(asyncio.BufferedProtocol):
    def __init__(self, server: XenStoreServer, domid: int) -> None:
        self.server = server
        self.domid = domid
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.decoder = PacketDecoder()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)
        core = self.server.core
        if self.server.closing:
            transport.close()  # accepted just before the server closed
            return
        if self.domid != 0 and core.introduced(self.domid) is None:
            transport.close()  # the domain was released while this was in the backlog
            return
        self.conn = core.connect(self.domid, privileged=self.domid == core.priv_domid)
        if not self.conn.privileged:
            self.transport.set_write_buffer_limits(high=UNPRIV_HIGH_WATER)
        self.server.clients[self.conn] = self
        self.server.note(self.conn, logging.DEBUG, "%r connected", self.conn)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        try:
            self.decoder.feed(data)
        except DecodeError as e:
            # cx stops handling a connection that sent an over-long header; what came
            # before it is still answered.
            self.server.note(conn, logging.WARNING, "%r: %s; closing the connection", conn, e)
            self.server.process(conn, self)
            self.close()
            return
        self.server.process(conn, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.server.core.disconnect(self.conn)
            self.server.clients.pop(self.conn, None)
            self.server.note(self.conn, logging.DEBUG, "%r disconnected", self.conn)

    def pause_writing(self) -> None:
        # Only unprivileged clients have a high-water mark low enough to get here
        # before the kernel applies back-pressure; dom0 is never throttled.
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is None or self.transport.is_closing() or self.conn is None:
            return
        self.server.process(self.conn, self)  # requests held back while paused
        if not self.paused:
            self.transport.resume_reading()

    def backlog(self) -> int:
        """Bytes written to this client that it has not read yet (in our buffer)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class XenStoreServer:
    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        core: XenStored | None = None,
        trace: PacketTrace | None = None,
        durable: DurableState | None = None,
        guest_log: LimitedLog[int] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.core = core or XenStored()
        self.trace = trace
        #: With ``--state-dir``: changes reach the disk before their replies leave.
        self.durable = durable
        #: Why the server stopped by itself, if it did.
        self.failure = ""
        self.clients: dict[Connection, _ClientProtocol] = {}
        #: Where every client's socket is read into; `PacketDecoder.feed` copies out.
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self._main: asyncio.Server | None = None
        self._domain_servers: dict[int, asyncio.Server] = {}
        self._pending_servers: dict[int, tuple[socket.socket, asyncio.Task[asyncio.Server]]] = {}
        self._closed = asyncio.Event()
        #: Set by `close`: connections accepted from now on are closed at once.
        self.closing = False
        #: What a guest's input makes us log is rate-limited per domain: a hostile
        #: guest must not be able to fill dom0's disk through our log.
        self.guest_log: LimitedLog[int] = guest_log or LimitedLog(log, describe=_domain)

    @property
    def domain_dir(self) -> Path:
        return Path(str(self.socket_path) + ".d")

    def domain_socket(self, domid: int) -> Path:
        return self.domain_dir / str(domid)

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(self.socket_path)
        loop = asyncio.get_running_loop()
        self._main = await loop.create_unix_server(
            lambda: _ClientProtocol(self, 0), path=str(self.socket_path)
        )
        os.chmod(self.socket_path, 0o600)
        self.domain_dir.mkdir(exist_ok=True)
        for stale in self.domain_dir.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
        # Domains restored from a state directory can reconnect at once.
        for domid, dom in sorted(self.core.domains.items()):
            if dom.introduced and domid != self.core.priv_domid:
                self._open_domain_socket(domid)
        log.info("xenstored listening on %s", self.socket_path)

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self.closing = True
        # asyncio may have accepted a connection whose protocol is not made yet; once
        # the server is closed such a socket would be leaked and its client hang.  Let
        # those finish (`connection_made` closes them now).
        for _ in range(3):
            await asyncio.sleep(0)
        if self._main is not None:
            self._main.close()
        for domid in list(self._domain_servers):
            self._close_domain_socket(domid)
        for client in list(self.clients.values()):
            client.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with contextlib.suppress(OSError):
            self.domain_dir.rmdir()
        self.guest_log.flush()
        self._closed.set()

    def note(self, conn: Connection, level: int, msg: str, *args: object) -> None:
        """Log a line ``conn``'s input caused: dom0's always, a guest's within its limit."""
        if conn.privileged:
            log.log(level, msg, *args)
        else:
            self.guest_log.log(conn.domid, level, msg, *args)

    # -- requests -------------------------------------------------------------------

    def process(self, conn: Connection, client: _ClientProtocol) -> None:
        """Handle the whole requests received on ``conn`` and send what they produced.

        An unprivileged client that stops reading its replies is not served further
        (its remaining requests wait in the decoder) until it catches up.
        """
        core = self.core
        ready = client.decoder.ready
        batch = 0
        while ready:
            packet = ready.popleft()
            if conn.closed:
                break
            if self.trace is not None:
                self.trace.record("in", conn.cid, conn.domid, packet)
            core.handle(conn, packet)
            if self.durable is not None and not self._commit():
                return
            # Domain sockets exist before the INTRODUCE reply leaves.
            if core.notifications:
                self._apply_notifications()
                batch = FLUSH_BATCH
            batch += 1
            # Requests that came together (a pipelining client) are answered in one
            # send; a bounded batch keeps an unprivileged client's backlog in check.
            if ready and batch < FLUSH_BATCH:
                continue
            self._flush()
            batch = 0
            if client.paused:
                break
        if batch:
            self._flush()

    def _commit(self) -> bool:
        """Journal what the request changed; on failure stop before replying."""
        assert self.durable is not None
        try:
            self.durable.commit()
        except OSError as e:
            self.failure = (
                f"cannot write the journal {self.durable.journal_path}: "
                f"{e.strerror or e}; stopping so that no unsaved change is acknowledged"
            )
            log.critical("%s", self.failure)
            for client in list(self.clients.values()):
                if client.transport is not None:
                    client.transport.abort()
            self._closed.set()
            return False
        return True

    def _flush(self) -> None:
        for conn in self.core.pending():
            packets = conn.take_output()
            client = self.clients.get(conn)
            if client is None:
                continue
            if not conn.privileged and client.backlog() > self.core.quotas.memory:
                # A domain that never reads must not make us hold unbounded memory
                # (XSA-326).  Deliberate: cx drops such events after 20 s; we drop them
                # once the backlog exceeds the domain's memory quota.  Replies stay.
                kept = [p for p in packets if p.op != Op.WATCH_EVENT]
                if len(kept) != len(packets):
                    self.note(conn, logging.WARNING, "%r does not read its events; dropping %d",
                              conn, len(packets) - len(kept))
                packets = kept
            if self.trace is not None:
                for p in packets:
                    self.trace.record("out", conn.cid, conn.domid, p)
            if len(packets) == 1:  # the usual reply alone: no generator, no join
                client.write(encode(packets[0]))
            else:
                client.write(b"".join(encode(p) for p in packets))

    def _apply_notifications(self) -> None:
        released = False
        while self.core.notifications:
            note = self.core.notifications.popleft()
            if isinstance(note, DomainIntroduced):
                self._open_domain_socket(note.domid)
            elif isinstance(note, DomainReleased):
                self._close_domain_socket(note.domid)
                released = True
        if not released:
            return  # the common case: no per-request scan of every client
        # Connections the core closed (released domains) lose their sockets too.
        for conn, client in list(self.clients.items()):
            if conn.closed:
                self._flush_one(conn, client)
                client.close()
                self.clients.pop(conn, None)

    def _flush_one(self, conn: Connection, client: _ClientProtocol) -> None:
        if conn.outbox:
            client.write(b"".join(encode(p) for p in conn.take_output()))

    # -- domain sockets -----------------------------------------------------------------

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
        loop = asyncio.get_running_loop()
        server = loop.create_unix_server(lambda: _ClientProtocol(self, domid), sock=sock)
        task = loop.create_task(server)
        self._pending_servers[domid] = (sock, task)
        task.add_done_callback(functools.partial(self._domain_server_ready, domid))
        log.info("domain %d introduced; its xenstore socket is %s", domid, path)

    def _domain_server_ready(self, domid: int, task: asyncio.Task[asyncio.Server]) -> None:
        entry = self._pending_servers.pop(domid, None)
        if task.cancelled() or task.exception() is not None:
            return
        server = task.result()
        if entry is None or entry[1] is not task:  # released while starting
            server.close()
            return
        self._domain_servers[domid] = server

    def _close_domain_socket(self, domid: int) -> None:
        server = self._domain_servers.pop(domid, None)
        if server is not None:
            server.close()
        pending = self._pending_servers.pop(domid, None)
        if pending is not None:
            pending[0].close()
        with contextlib.suppress(FileNotFoundError):
            self.domain_socket(domid).unlink()
        self.guest_log.flush(domid)
        log.info("domain %d released", domid)


def _domain(domid: int) -> str:
    return f"domain {domid}"

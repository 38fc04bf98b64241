"""The shell around `XenStored`: the dom0 socket and one socket per domain, on epoll.

A connection on the main socket is dom0 (privileged).  When dom0 INTRODUCEs domain D,
the server listens on ``<socket>.d/<D>``; every connection accepted there acts as
domain D.  RELEASE or the domain's death closes those connections and removes the
socket.  The shell only moves bytes: all decisions are the core's.

One shell serves both ways the daemon runs: ``stubdom xenstored`` turns `poll` in a
plain loop (`run`), and a process that already has an asyncio loop (the in-process
host, the tests) hands the epoll descriptor to it (`start`), which calls `poll` when
it is readable.  A turn is cx's: one read per ready connection, every whole request
in it handled, then one send per connection with output.  asyncio's transports cost a
callback, a handle and a buffer check per read and per write: the asyncio shell spent
a fifth more instructions on a READ or a WRITE (callgrind, issue 16).  The shell is
compiled with the core (`stubdom.compiled`); it must run as plain Python too, so its
usual path is kept to few calls either way (bench/xsinstr.py counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from stubdom.fdio import remove_stale_socket
from stubdom.ratelimit import LimitedLog
from stubdom.wire.constants import Op
from stubdom.wire.packet import HEADER, DecodeError, PacketDecoder, RawPacket, make_packet
from stubdom.xenstored.connection import Connection, Output
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.errors import DomainIntroduced, DomainReleased
from stubdom.xenstored.persist import DurableState
from stubdom.xenstored.pollwindow import PollWindow
from stubdom.xenstored.trace import PacketTrace

log = logging.getLogger(__name__)

#: An unprivileged client whose unread output exceeds this is not read from until it
#: catches up (cx stops reading a domain with too many outstanding replies).
UNPRIV_HIGH_WATER = 64 * 1024
#: ... and is read again once its unread output is down to this.
UNPRIV_LOW_WATER = UNPRIV_HIGH_WATER // 4
#: Replies to requests that arrived together go out in one send, at most this many.
FLUSH_BATCH = 32

#: Bytes read from a socket at a time.
READ_SIZE = 64 * 1024
#: Connections accepted on one listening socket per turn (the rest wait in the backlog).
ACCEPT_BATCH = 64

_pack = HEADER.pack
_read = os.read
_write = os.write
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_GONE = select.EPOLLHUP | select.EPOLLERR


class _Client:
    """One accepted socket: its decoder, its unsent output, whether it is read."""

    __slots__ = (
        "closed", "conn", "decoder", "fd", "held", "outbuf", "paused", "server", "shutting", "sock"
    )

    def __init__(self, server: XenStoreServer, sock: socket.socket, conn: Connection) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.conn = conn
        self.decoder = PacketDecoder()
        #: Output the kernel did not take yet.
        self.outbuf = bytearray()
        #: Not read because its output is over the high-water mark.
        self.paused = False
        #: Not read because someone asked (`pause_reading`).
        self.held = False
        #: Closing once its output is out.
        self.shutting = False
        #: The socket is closed.
        self.closed = False

    # -- what callers and tests use ------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading this client until `resume_reading` (its requests wait)."""
        self.held = True
        self._watch()

    def resume_reading(self) -> None:
        self.held = False
        self._watch()

    def backlog(self) -> int:
        """Bytes written to this client that it has not read yet (in our buffer)."""
        return len(self.outbuf)

    def close(self) -> None:
        """Close once what is queued for it is sent (as asyncio's ``close``)."""
        if self.closed:
            return
        self.server.deliver(self.conn, self, self.conn.take_output())
        if self.outbuf:
            self.shutting = True
            self._watch()
        else:
            self.abort()

    def abort(self) -> None:
        """Close now, dropping unsent output."""
        if self.closed:
            return
        self.closed = True
        self.server.forget(self)
        self.sock.close()

    # -- I/O ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.shutting or self.closed:
            return
        if not self.outbuf:
            try:
                sent = _write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.abort()  # the peer is gone; reading will not tell us more
                return
            if sent == len(data):
                return
            self.outbuf += memoryview(data)[sent:]
        else:
            self.outbuf += data
        if not self.conn.privileged and len(self.outbuf) > UNPRIV_HIGH_WATER:
            self.paused = True
        self._watch()

    def on_event(self, events: int) -> None:
        """What epoll reported: the usual case (readable, and read) in this one call."""
        if events != _IN or self.paused or self.held or self.shutting:
            self._on_other(events)
            return
        try:
            # A fresh bytes, not a shared buffer and a view of it: the decoder cuts the
            # payload from it with one slice.  os.read and os.write on the descriptor:
            # the same system calls as the socket's recv and send, with cheaper
            # argument parsing (500 instructions each).
            data = _read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.abort()
            return
        decoder = self.decoder
        packet = decoder.whole(data)
        if packet is not None:  # the usual read: one request
            self.server.process(self.conn, self, packet)
            return
        try:
            decoder.feed(data)
        except DecodeError as e:
            # cx stops handling a connection that sent an over-long header; what came
            # before it is still answered.
            conn = self.conn
            self.server.note(conn, logging.WARNING, "%r: %s; closing the connection", conn, e)
            self.server.process(conn, self)
            self.close()
            return
        if decoder.ready:
            self.server.process(self.conn, self)

    def _on_other(self, events: int) -> None:
        if events & _OUT or (events & _GONE and self.outbuf):
            self._drain()
        if self.closed:
            return
        if self.reading:
            if events & (_IN | _GONE):
                self.on_event(_IN)  # reads
        elif events & _GONE and not self.outbuf:
            self.abort()  # hung up while not read: nothing more can reach it

    @property
    def reading(self) -> bool:
        return not (self.paused or self.held or self.shutting)

    def _drain(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self.abort()
            return
        del self.outbuf[:sent]
        if self.shutting and not self.outbuf:
            self.abort()
            return
        if self.paused and len(self.outbuf) <= UNPRIV_LOW_WATER:
            self.paused = False
            self.server.process(self.conn, self)  # requests held back while paused
        self._watch()

    def _watch(self) -> None:
        """Tell epoll what this client waits for now."""
        if self.closed:
            return
        mask = (_IN if self.reading else 0) | (_OUT if self.outbuf else 0)
        self.server.watch_fd(self.fd, mask)


class XenStoreServer:
    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        core: XenStored | None = None,
        trace: PacketTrace | None = None,
        durable: DurableState | None = None,
        guest_log: LimitedLog[int] | None = None,
        poll_window: PollWindow | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        #: `run` polls for input this long before it sleeps (None: it sleeps at once).
        self.poll_window = poll_window
        self.core = core or XenStored()
        self.trace = trace
        #: With ``--state-dir``: changes reach the disk before their replies leave.
        self.durable = durable
        #: Why the server stopped by itself, if it did.
        self.failure = ""
        self.clients: dict[Connection, _Client] = {}
        self._epoll = select.epoll()
        #: What each registered descriptor's events go to, and the mask it has.
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._masks: dict[int, int] = {}
        self._listeners: dict[int, socket.socket] = {}  # domid (0: the main socket)
        #: Set once stopped (by `stop`, `close` or a journal failure: see `failure`).
        self.stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
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

    # -- life cycle ---------------------------------------------------------------------

    def listen(self) -> None:
        """Bind the dom0 socket and those of the domains the core already knows."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(self.socket_path)
        self._listen(0, self.socket_path, 0o600)
        self.domain_dir.mkdir(exist_ok=True)
        for stale in self.domain_dir.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
        # Domains restored from a state directory can reconnect at once.
        for domid, dom in sorted(self.core.domains.items()):
            if dom.introduced and domid != self.core.priv_domid:
                self._open_domain_socket(domid)
        log.info("xenstored listening on %s", self.socket_path)

    def run(self, stop_signals: Iterable[signal.Signals] = ()) -> None:
        """Serve until `stop` (or one of ``stop_signals``), then `shutdown`."""
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._register(rfd, _IN, functools.partial(_drain_pipe, rfd))
        previous = signal.set_wakeup_fd(wfd)
        handlers = {sig: signal.signal(sig, self._stop_on_signal) for sig in stop_signals}
        try:
            # `poll`'s body, inlined: one call less per turn.
            wait, dispatch, flush = self._epoll.poll, self._handlers, self.flush
            window = self.poll_window
            while not self.stopped:
                try:
                    ready = wait(-1) if window is None else self._polled(window)
                except InterruptedError:  # pragma: no cover - PEP 475 retries
                    continue
                for fd, events in ready:
                    handler = dispatch.get(fd)
                    if handler is not None:
                        handler(events)
                flush()
        finally:
            signal.set_wakeup_fd(previous)
            for sig, old in handlers.items():
                signal.signal(sig, old)
            self._unregister(rfd)
            os.close(rfd)
            os.close(wfd)
            self.shutdown()
            self._epoll.close()

    def _polled(self, window: PollWindow) -> list[tuple[int, int]]:
        """What is ready, polled for up to the window before sleeping (`pollwindow`);
        the spell goes to the window's rule.  The poll yields the CPU to anything else
        runnable on it: a client beside the daemon must not wait for the poll to end."""
        wait, clock = self._epoll.poll, time.monotonic_ns
        start = clock()
        ready: list[tuple[int, int]] = []
        if window.window:
            end = start + window.window
            while True:
                ready = wait(0)
                if ready or clock() >= end:
                    break
                os.sched_yield()
        if not ready:
            ready = wait(-1)
        window.idle(clock() - start)
        return ready

    def stop(self) -> None:
        self.stopped = True

    def _stop_on_signal(self, *_: object) -> None:
        self.stop()

    def poll(self, timeout: float | None = 0) -> None:
        """One turn: every ready descriptor served, then the output sent."""
        try:
            ready = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, signals aside
            return
        handlers = self._handlers
        for fd, events in ready:
            handler = handlers.get(fd)
            if handler is not None:
                handler(events)
        self.flush()

    def shutdown(self) -> None:
        """Close every socket and remove the files (idempotent)."""
        if self.closing:
            return
        self.closing = True
        self.stop()
        for domid in list(self._listeners):
            if domid:
                self._close_domain_socket(domid)
        main = self._listeners.pop(0, None)
        if main is not None:
            self._unregister(main.fileno())
            main.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        for client in list(self.clients.values()):
            client.close()
        with contextlib.suppress(OSError):
            self.domain_dir.rmdir()
        self.guest_log.flush()

    # -- inside an asyncio loop ------------------------------------------------------------

    async def start(self) -> None:
        """`listen`, then serve from the running loop (until `close`)."""
        self.listen()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._epoll.fileno(), self.poll)

    async def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self._epoll.fileno())
        self.shutdown()
        # Clients closing with output still queued get it now, when they can take it.
        for client in list(self.clients.values()):
            client.abort()
        self._epoll.close()

    # -- descriptors ------------------------------------------------------------------

    def _register(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        self._epoll.register(fd, mask)
        self._handlers[fd] = handler
        self._masks[fd] = mask

    def _unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._masks.pop(fd, None)
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def watch_fd(self, fd: int, mask: int) -> None:
        if fd in self._masks and self._masks[fd] != mask:
            self._masks[fd] = mask
            self._epoll.modify(fd, mask)

    def forget(self, client: _Client) -> None:
        """``client``'s socket is about to close: drop it and its connection."""
        self._unregister(client.fd)
        conn = client.conn
        if self.clients.pop(conn, None) is not None:
            self.core.disconnect(conn)
            self.note(conn, logging.DEBUG, "%r disconnected", conn)

    def _listen(self, domid: int, path: Path, mode: int | None = None) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            if mode is not None:
                os.chmod(path, mode)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._listeners[domid] = sock
        self._register(sock.fileno(), _IN, functools.partial(self._accept, sock, domid))

    def _accept(self, listener: socket.socket, domid: int, events: int) -> None:
        core = self.core
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors: the client waits in the backlog
                log.warning("cannot accept on %s: %s", listener.getsockname(), e)
                return
            if self.closing or (domid != 0 and core.introduced(domid) is None):
                sock.close()
                continue
            sock.setblocking(False)
            conn = core.connect(domid, privileged=domid == core.priv_domid)
            client = _Client(self, sock, conn)
            self.clients[conn] = client
            self._register(client.fd, _IN, client.on_event)
            self.note(conn, logging.DEBUG, "%r connected", conn)

    def note(self, conn: Connection, level: int, msg: str, *args: object) -> None:
        """Log a line ``conn``'s input caused: dom0's always, a guest's within its limit."""
        if conn.privileged:
            log.log(level, msg, *args)
        else:
            self.guest_log.log(conn.domid, level, msg, *args)

    # -- requests -------------------------------------------------------------------

    def process(self, conn: Connection, client: _Client, first: RawPacket | None = None) -> None:
        """Handle ``first`` (a request not queued in the decoder), then the whole requests
        the decoder holds; their output goes at `flush`.

        An unprivileged client that stops reading its replies is not served further
        (its remaining requests wait in the decoder) until it catches up.
        """
        core = self.core
        ready = client.decoder.ready
        trace = self.trace
        batch = 0
        while True:
            if first is not None:
                packet, first = first, None
            elif ready and not client.paused:
                packet = ready.popleft()
            else:
                return
            if conn.closed:
                break
            if trace is not None:
                trace.record("in", conn.cid, conn.domid, make_packet(packet))
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
            if batch >= FLUSH_BATCH:
                self.flush()
                batch = 0

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
                client.abort()
            for conn in self.core.pending():
                conn.take_output()
            self.stop()
            return False
        return True

    def flush(self) -> None:
        """Send what the core queued, one send per connection."""
        clients = self.clients
        for conn in self.core.pending():
            client = clients.get(conn)
            packets = conn.take_output()
            if client is None:
                continue
            if len(packets) != 1 or client.outbuf or client.shutting or self.trace is not None:
                self.deliver(conn, client, packets)
                continue
            # The usual reply (or event) alone to a client that keeps up: what `deliver`
            # and `_Client.write` would do, without their checks and calls.
            op, payload, req_id, tx_id = packets[0]
            data = _pack(op, req_id, tx_id, len(payload)) + payload
            try:
                sent = _write(client.fd, data)
            except OSError:
                client.write(data)  # it knows what to do with the error
                continue
            if sent != len(data):
                client.write(data[sent:])  # keeps the rest

    def deliver(self, conn: Connection, client: _Client, packets: list[Output]) -> None:
        if not packets:
            return
        if not conn.privileged and client.backlog() > self.core.quotas.memory:
            # A domain that never reads must not make us hold unbounded memory
            # (XSA-326).  Deliberate: cx drops such events after 20 s; we drop them
            # once the backlog exceeds the domain's memory quota.  Replies stay.
            kept = [p for p in packets if p[0] != Op.WATCH_EVENT]
            if len(kept) != len(packets):
                self.note(conn, logging.WARNING, "%r does not read its events; dropping %d",
                          conn, len(packets) - len(kept))
            packets = kept
        if self.trace is not None:
            for p in packets:
                self.trace.record("out", conn.cid, conn.domid, make_packet(p))
        # The core queues no payload over PAYLOAD_MAX (E2BIG, XSA-324): no check here.
        if len(packets) == 1:  # the usual reply alone: no join
            op, payload, req_id, tx_id = packets[0]
            client.write(_pack(op, req_id, tx_id, len(payload)) + payload)
        elif packets:
            parts = []
            for op, payload, req_id, tx_id in packets:
                parts.append(_pack(op, req_id, tx_id, len(payload)))
                parts.append(payload)
            client.write(b"".join(parts))

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
                client.close()

    # -- domain sockets -----------------------------------------------------------------

    def _open_domain_socket(self, domid: int) -> None:
        if domid in self._listeners:
            return
        path = self.domain_socket(domid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Bound here: a client may connect as soon as it reads the reply.
        self._listen(domid, path)
        log.info("domain %d introduced; its xenstore socket is %s", domid, path)

    def _close_domain_socket(self, domid: int) -> None:
        sock = self._listeners.pop(domid, None)
        if sock is not None:
            self._unregister(sock.fileno())
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.domain_socket(domid).unlink()
        self.guest_log.flush(domid)
        log.info("domain %d released", domid)


def _drain_pipe(fd: int, events: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.read(fd, 512)


def _domain(domid: int) -> str:
    return f"domain {domid}"

"""The xenstore ring as a client `Transport`: an asyncio shell around `ring.RingEnd`.

A guest (or a stubdomain) reaches xenstored through a shared page and an event
channel.  Here the page is a file mapped ``MAP_SHARED`` (under the oracle kit's shim,
``$XSFAKE_DIR/ring-<domid>``, the same file the daemon maps) and the event channel
is a FIFO to which one byte, the domain's *local* port, is written per kick (ox
dispatches on it; cx takes any byte).

One pump task moves bytes: it consumes every response byte, puts queued request
bytes on the ring, and kicks after each change (Xen's rule: whenever the ring
structure is updated, the event channel is signalled).  `write` queues a whole
message and pumps at once, so a request is on the ring before the caller's first
suspension; when it does not fit, `drain` waits until ``req_cons`` moves
(backpressure).  Received bytes wait in a buffer for `read`.

Wake-ups: with ``notify`` (a FIFO that gets a byte whenever the daemon signals the
domain) the pump sleeps in ``loop.add_reader`` until then, with a slow safety poll.
Without it, it polls (`ring.Backoff`): a few bare yields, then sleeps doubling to
1 ms while a reply is awaited, to 20 ms when idle.

Reconnection (``connection`` field, ``XENSTORE_SERVER_FEATURE_RECONNECTION``).
oxenstored 4.17 advertises it (``Xb.open_mmap`` sets ``server_features`` to 1) and,
on its next read or write of a ring whose ``connection`` is not CONNECTED, resets the
ring (``Xs_ring.close``: indexes to 0, then CONNECTED) and drops the connection's
partial packets, queued replies, watches and transactions.  cxenstored 4.17 advertises
nothing (``server_features`` stays 0) and never reads ``connection``; only a
toolstack's new INTRODUCE of the domain resets its ring there (``do_introduce`` ->
``domain_conn_reset``).  So ``reset=True`` raises `RingUnsupported` on cx rather than
wait for ever, and a client reconnecting over cx takes the ring up as it is, which is
sound only between messages.  Neither daemon advertises the error indicator
(``XENSTORE_SERVER_FEATURE_ERROR``); where a server does, a non-zero ``error`` ends
the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path

from stubdom.fdio import set_once
from stubdom.xenstore.errors import ConnectionClosed, ProtocolError, RingUnsupported
from stubdom.xenstore.ring import (
    CONNECTED,
    FEATURE_ERROR,
    FEATURE_RECONNECTION,
    GUEST,
    PAGE_MIN,
    Backoff,
    Outstanding,
    RingEnd,
)
from stubdom.xenstore.transport import BufferedTransport

log = logging.getLogger(__name__)

#: The size of a ring page (only its first `ring.PAGE_MIN` bytes are used).
PAGE_SIZE = 4096
#: With notifications: how often the pump looks anyway (a lost byte costs this).
NOTIFY_SAFETY_POLL = 0.5
#: While a reply is awaited and nothing moves: kick again this often, in case a kick
#: was lost (a full FIFO drops it).
REKICK = 0.1
#: `RingTransport.reset`: how long to wait for the server to reset the ring.
RESET_TIMEOUT = 10.0


def _memory_barrier() -> Callable[[], None]:
    """The fence of `ring.RingEnd`, as far as CPython allows: taking and releasing a
    lock is an acquire then a release, which orders load before load, load before store
    and store before store -- every ordering the ring needs (never store before load)."""
    lock = threading.Lock()

    def barrier() -> None:
        lock.acquire()
        lock.release()

    return barrier


def _map_page(page: Path) -> mmap.mmap:
    fd = os.open(page, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = min(os.fstat(fd).st_size, PAGE_SIZE)
        if size < PAGE_MIN:
            raise OSError(errno.EINVAL, f"ring page {page} has {size} bytes")
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


class RingTransport(BufferedTransport):
    """The client end of a xenstore ring page; construct with `open`."""

    def __init__(
        self,
        page: mmap.mmap,
        evtchn_fd: int,
        port: int,
        notify_fd: int | None,
        description: str,
        backoff: Backoff | None = None,
    ) -> None:
        self.description = description
        self._loop = asyncio.get_running_loop()
        self._mm = page
        self._ring = RingEnd(page, GUEST, barrier=_memory_barrier())
        self._evfd = evtchn_fd
        self._kick_byte = bytes([port & 0xFF])
        self._notify_fd = notify_fd
        self._backoff = backoff or Backoff()
        self._outstanding = Outstanding()
        self._rx = bytearray()
        self._rx_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._waker: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._last_kick = 0.0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        page: Path,
        evtchn: Path,
        port: int,
        notify: Path | None = None,
        *,
        description: str | None = None,
        reset: bool | None = False,
        backoff: Backoff | None = None,
    ) -> RingTransport:
        """Map ``page``, open the ``evtchn`` FIFO (kick byte: ``port``) and ``notify``.

        ``reset``: True asks the server to reset the ring first (the RECONNECT
        handshake; `RingUnsupported` if the server does not advertise it), None does
        so if it is advertised, False uses the ring as it is (a freshly introduced
        ring is empty).
        """
        if not 0 < port < 256:
            raise ValueError(f"the kick byte is the local port, 1..255, not {port}")
        mm = _map_page(page)
        fds: list[int] = []
        try:
            fds.append(os.open(evtchn, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            if notify is not None:
                # O_RDWR: a FIFO with no writer would otherwise read as EOF for ever.
                fds.append(os.open(notify, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
        except BaseException:
            for fd in fds:
                os.close(fd)
            mm.close()
            raise
        self = cls(
            mm,
            fds[0],
            port,
            fds[1] if notify is not None else None,
            description or f"ring:{page}",
            backoff,
        )
        try:
            features = self._ring.server_features
            if reset or (reset is None and features & FEATURE_RECONNECTION):
                await self.reset()
        except BaseException:
            self.close()
            raise
        self._start()
        return self

    def _start(self) -> None:
        if self._notify_fd is not None:
            self._loop.add_reader(self._notify_fd, self._on_notify)
        self._task = self._loop.create_task(self._pump_loop(), name=f"ring {self.description}")

    @property
    def server_features(self) -> int:
        return self._ring.server_features

    # -- the handshake ---------------------------------------------------------

    async def reset(self, timeout: float = RESET_TIMEOUT) -> None:
        """Ask the server to reset the ring (both queues emptied, the connection's
        watches and transactions dropped) and wait until it has.  Only before the
        pump starts: `open` with ``reset``."""
        if self._task is not None:
            raise RuntimeError(f"{self.description}: reset only before the ring is in use")
        if not self._ring.server_features & FEATURE_RECONNECTION:
            raise RingUnsupported(
                errno.EOPNOTSUPP, f"{self.description}: the server offers no ring reconnection"
            )
        self._ring.ask_reconnect()
        self._kick()
        backoff = Backoff(idle_max=0.005)
        deadline = self._loop.time() + timeout
        while self._ring.connection != CONNECTED:
            now = self._loop.time()
            if now > deadline:
                raise TimeoutError(f"{self.description}: the ring was not reset in {timeout:g} s")
            if now - self._last_kick > REKICK:
                self._kick()
            await asyncio.sleep(backoff.next(True, now))
        self._outstanding.reset()
        self._rx.clear()
        log.debug("%s: ring reset by the server", self.description)

    # -- Transport -------------------------------------------------------------

    def write(self, message: bytes) -> None:
        if self._closed or self._error is not None:
            raise ConnectionClosed(f"{self.description}: connection closed")
        if not message:
            return
        self._ring.send(message)
        self._outstanding.sent()
        self._backoff.progressed(self._loop.time())
        try:
            self._step()
        except (OSError, ProtocolError) as exc:
            self._fail(exc)
            return
        self._poke()

    def _has_unsent(self) -> bool:
        return self._ring_queued() > 0

    async def read(self) -> bytes:
        while True:
            if self._rx:
                data = bytes(self._rx)
                self._rx.clear()
                return data
            if self._error is not None:
                raise self._error
            if self._closed:
                return b""
            self._rx_waiter = self._loop.create_future()
            try:
                await self._rx_waiter
            finally:
                self._rx_waiter = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._notify_fd is not None:
            self._loop.remove_reader(self._notify_fd)
            os.close(self._notify_fd)
            self._notify_fd = None
        os.close(self._evfd)
        self._ring.release()
        self._mm.close()
        self._wake_all()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the pump --------------------------------------------------------------

    def _ring_queued(self) -> int:
        return 0 if self._closed else self._ring.queued

    def _step(self) -> bool:
        """One exchange with the ring; whether anything moved."""
        ring = self._ring
        if ring.server_features & FEATURE_ERROR and ring.error:
            raise ProtocolError(f"{self.description}: the server stopped the ring ({ring.error})")
        step = ring.pump()
        if step.received:
            self._outstanding.received(step.received)
            self._rx += step.received
            set_once(self._rx_waiter)
        if step.kick:
            self._kick()
        if step.sent and not ring.queued:
            self._wake_drainers()
        return step.kick

    async def _pump_loop(self) -> None:
        try:
            while not self._closed and self._error is None:
                if self._step():
                    self._backoff.progressed(self._loop.time())
                    await asyncio.sleep(0)
                    continue
                await self._wait()
        except (OSError, ProtocolError) as exc:
            self._fail(exc)

    def _busy(self) -> bool:
        return self._outstanding.count > 0 or self._ring.queued > 0

    async def _wait(self) -> None:
        """Until the ring may have moved: a notification, a write, or a poll's delay."""
        now = self._loop.time()
        busy = self._busy()
        if busy and now - self._last_kick > REKICK:
            self._kick()
        if self._notify_fd is not None:
            delay = REKICK if busy else NOTIFY_SAFETY_POLL
        else:
            delay = self._backoff.next(busy, now)
            if delay == 0.0:
                await asyncio.sleep(0)
                return
        self._waker = fut = self._loop.create_future()
        handle = self._loop.call_later(delay, set_once, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waker = None

    def _poke(self) -> None:
        set_once(self._waker)

    def _on_notify(self) -> None:
        assert self._notify_fd is not None
        try:
            while os.read(self._notify_fd, 4096):
                pass
        except BlockingIOError:
            pass
        except OSError as exc:
            self._fail(exc)
        self._poke()

    def _kick(self) -> None:
        self._last_kick = self._loop.time()
        # A full FIFO drops the kick: the daemon has kicks enough to wake up.
        with contextlib.suppress(BlockingIOError):
            os.write(self._evfd, self._kick_byte)

    # -- endings ---------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._closed:
            log.debug("%s: ring failed: %s", self.description, exc)
            self._error = exc
        self._wake_all()

    def _wake_all(self) -> None:
        set_once(self._rx_waiter)
        self._wake_drainers()
        self._poke()


__all__ = ["PAGE_SIZE", "RingTransport", "RingUnsupported"]

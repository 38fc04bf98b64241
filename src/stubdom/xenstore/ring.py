"""The xenstore shared ring, sans I/O: indexes and bytes in, bytes and "kick" out.

The page layout (Xen's ``docs/misc/xenstore-ring.txt``): the request ring (guest to
server) at bytes 0-1023, the response ring at 1024-2047, then the free-running
little-endian ``uint32`` indexes ``req_cons``, ``req_prod``, ``rsp_cons``, ``rsp_prod``
at 2048-2060, ``server_features`` at 2064, ``connection`` at 2068, ``error`` at 2072.
Byte ``i`` of a stream lives at ``i % 1024``; indexes wrap at 2**32.

`RingEnd` is one side of a page given as any writable buffer (a bytearray in tests,
an mmap in `stubdom.xenstore.ringtransport`).  It never sleeps and never signals:
`RingEnd.pump` moves what it can and says whether the peer must be kicked.

Memory ordering.  The peer is another process writing the same page, so each
access follows the ring rules: an index is read *once* per step, with one 4-byte
load or store (through a view of the page as native ``uint32`` words: CPython copies an
item with one ``memcpy`` of constant size, which compilers emit as a single aligned load
or store, so no index is ever seen torn; ``struct.pack_into`` would not do: it zeroes
its bytes before it writes them, and the peer sees the index 0 in between), and is
checked (``prod - cons <= 1024``, else `RingIndexError`) before any data is touched;
data is read before the consumer index is advanced, and written before the producer
index is published.  Python offers no fence instruction: each of these accesses is a
separate C call, so program order holds at the compiler level, and on x86-64 (TSO:
loads are not reordered with loads, stores not with stores) that is the hardware
order too.  On weakly ordered CPUs `RingEnd` calls ``barrier`` (a callable the I/O
shell may supply) at the two points where Xen's C code has ``xen_mb()``.
"""

from __future__ import annotations

import struct
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stubdom.xenstore.errors import ProtocolError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: Bytes in each of the two rings.
RING_SIZE = 1024
REQ_OFFSET = 0
RSP_OFFSET = 1024
REQ_CONS = 2048
REQ_PROD = 2052
RSP_CONS = 2056
RSP_PROD = 2060
SERVER_FEATURES = 2064
CONNECTION = 2068
ERROR = 2072
#: The smallest buffer that holds every field.
PAGE_MIN = 2076

#: ``server_features`` bits.
FEATURE_RECONNECTION = 1
FEATURE_ERROR = 2
#: ``connection`` values.
CONNECTED = 0
RECONNECT = 1

_MASK = 0xFFFFFFFF
_HEADER = struct.Struct("<4I")  # type, req_id, tx_id, len
_WATCH_EVENT = 15
# The indexes are accessed as items of a native "I" view: one load/store (see above).
assert sys.byteorder == "little" and struct.calcsize("@I") == 4, "little-endian uint32s"


class RingIndexError(ProtocolError):
    """The peer left indexes that no ring allows (``prod - cons > 1024``)."""


def used(cons: int, prod: int) -> int:
    """Bytes between ``cons`` and ``prod``, modulo 2**32; `RingIndexError` if > a ring."""
    n = (prod - cons) & _MASK
    if n > RING_SIZE:
        raise RingIndexError(f"ring indexes cons={cons} prod={prod}: {n} bytes pending")
    return n


def spans(index: int, length: int) -> list[tuple[int, int]]:
    """The (offset in the ring, length) pieces of ``length`` bytes from stream ``index``:
    one piece, or two when they cross the end of the ring."""
    start = index % RING_SIZE
    first = min(length, RING_SIZE - start)
    pieces = [(start, first)] if first else []
    if length > first:
        pieces.append((0, length - first))
    return pieces


@dataclass(frozen=True)
class Step:
    """What one `RingEnd.pump` did: bytes received, bytes put on the ring, and whether
    to signal the event channel (some index moved)."""

    received: bytes
    sent: int

    @property
    def kick(self) -> bool:
        return bool(self.received) or self.sent > 0


@dataclass(frozen=True)
class _Side:
    """Where one end reads and writes: (data offset, consumer, producer) of each ring."""

    in_data: int
    in_cons: int
    in_prod: int
    out_data: int
    out_cons: int
    out_prod: int


GUEST = _Side(RSP_OFFSET, RSP_CONS, RSP_PROD, REQ_OFFSET, REQ_CONS, REQ_PROD)
SERVER = _Side(REQ_OFFSET, REQ_CONS, REQ_PROD, RSP_OFFSET, RSP_CONS, RSP_PROD)


def _no_barrier() -> None:
    return None


class RingEnd:
    """One end of a ring page: a queue of bytes to send, and the bytes received.

    `send` queues bytes (a message may be any length: it goes over as many ring-fulls
    as it takes); `pump` consumes every byte the peer produced and produces as much of
    the queue as fits.  Only this end's own indexes are ever written.
    """

    def __init__(
        self,
        page: WriteableBuffer,
        side: _Side = GUEST,
        *,
        barrier: Callable[[], None] = _no_barrier,
    ) -> None:
        view = memoryview(page).cast("B")
        if len(view) < PAGE_MIN:
            view.release()
            raise ValueError(f"a ring page needs {PAGE_MIN} bytes, got {len(view)}")
        self._view = view
        #: The fields as words: one aligned 4-byte access each (PAGE_MIN is 4 * 519).
        self._words = view[:PAGE_MIN].cast("I")
        self._side = side
        self._barrier = barrier
        self._out: deque[memoryview] = deque()
        self._queued = 0

    # -- fields ----------------------------------------------------------------

    def load(self, offset: int) -> int:
        """One ``uint32`` field of the page, read once."""
        value: int = self._words[offset // 4]
        return value

    def store(self, offset: int, value: int) -> None:
        self._words[offset // 4] = value & _MASK

    @property
    def server_features(self) -> int:
        return self.load(SERVER_FEATURES)

    @property
    def connection(self) -> int:
        return self.load(CONNECTION)

    @property
    def error(self) -> int:
        return self.load(ERROR)

    # -- the byte streams ------------------------------------------------------

    @property
    def queued(self) -> int:
        """Bytes given to `send` and not yet on the ring."""
        return self._queued

    def send(self, data: bytes) -> None:
        """Queue bytes for the peer; `pump` puts them on the ring."""
        if data:
            self._out.append(memoryview(data))
            self._queued += len(data)

    def receive(self, limit: int = RING_SIZE) -> bytes:
        """Consume up to ``limit`` bytes the peer produced (b"" if none)."""
        s = self._side
        cons = self.load(s.in_cons)
        prod = self.load(s.in_prod)
        n = min(used(cons, prod), limit)
        if not n:
            return b""
        self._barrier()  # indexes before data
        base = s.in_data
        data = b"".join(bytes(self._view[base + o : base + o + k]) for o, k in spans(cons, n))
        self._barrier()  # data before giving the space back
        self.store(s.in_cons, cons + n)
        return data

    def transmit(self) -> int:
        """Produce as much of the queue as the ring has room for; how many bytes."""
        s = self._side
        cons = self.load(s.out_cons)
        prod = self.load(s.out_prod)
        room = RING_SIZE - used(cons, prod)
        sent = 0
        if not room or not self._out:
            return 0
        self._barrier()  # indexes before data
        base = s.out_data
        while room and self._out:
            head = self._out[0]
            n = min(room, len(head))
            for o, k in spans(prod + sent, n):
                self._view[base + o : base + o + k] = head[:k]
                head = head[k:]
            sent += n
            room -= n
            if head:
                self._out[0] = head
            else:
                self._out.popleft()
        self._barrier()  # data before publishing it
        self.store(s.out_prod, prod + sent)
        self._queued -= sent
        return sent

    def pump(self) -> Step:
        """Receive everything available (a whole ring at most), then transmit."""
        received = self.receive()
        return Step(received, self.transmit())

    def pending_out(self) -> int:
        """Bytes this end produced that the peer has not consumed."""
        s = self._side
        return used(self.load(s.out_cons), self.load(s.out_prod))

    # -- reconnection (server feature bit 0) -----------------------------------

    def ask_reconnect(self) -> None:
        """Guest: ask the server to reset the ring (``connection`` = RECONNECT); from
        now on only ``connection`` means anything, until it is CONNECTED again."""
        self.discard()
        self.store(CONNECTION, RECONNECT)

    def reset(self) -> None:
        """Server: empty both rings and mark the ring CONNECTED, as a server does
        for a reconnection; data first, the connection state last."""
        for offset in (REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD):
            self.store(offset, 0)
        self.discard()
        self._barrier()
        self.store(CONNECTION, CONNECTED)

    def discard(self) -> None:
        """Forget what is queued (a reset ring starts empty)."""
        self._out.clear()
        self._queued = 0

    def release(self) -> None:
        """Drop the view of the page (an mmap cannot close while it is viewed)."""
        self._out.clear()
        self._words.release()
        self._view.release()


@dataclass
class Backoff:
    """When to look at the ring again when nothing notifies us (polling).

    After progress: a few bare yields (a reply to a fast daemon is often there at
    once), then sleeps doubling from ``first`` up to ``busy_max`` while a reply is
    awaited and something moved within ``patience`` seconds, else up to ``idle_max``:
    an idle ring costs a wake-up every ``idle_max``, never a spinning CPU.
    `next` returns the sleep; 0.0 means "yield once".
    """

    spins: int = 3
    first: float = 50e-6
    busy_max: float = 0.001
    idle_max: float = 0.02
    patience: float = 1.0
    _spun: int = 0
    _delay: float = 0.0
    _progress_at: float = float("-inf")

    def progressed(self, now: float) -> None:
        self._spun = 0
        self._delay = 0.0
        self._progress_at = now

    def next(self, busy: bool, now: float) -> float:
        if self._spun < self.spins:
            self._spun += 1
            return 0.0
        recent = now - self._progress_at < self.patience
        cap = self.busy_max if busy and recent else self.idle_max
        self._delay = min(max(self._delay * 2, self.first), cap)
        return self._delay


class Outstanding:
    """How many requests still wait for their reply, from the bytes each way.

    Sent messages are counted whole (`Transport.write` gets whole messages); received
    ones are framed by their 16-byte header, and watch events are not replies.  The
    ring shell polls fast only while this is positive.
    """

    def __init__(self) -> None:
        self.count = 0
        self._header = bytearray()
        self._skip = 0

    def sent(self, messages: int = 1) -> None:
        self.count += messages

    def received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                k = min(self._skip, len(view))
                self._skip -= k
                view = view[k:]
                continue
            k = min(_HEADER.size - len(self._header), len(view))
            self._header += view[:k]
            view = view[k:]
            if len(self._header) == _HEADER.size:
                op, _req, _tx, length = _HEADER.unpack(self._header)
                self._header.clear()
                self._skip = length
                if op != _WATCH_EVENT and self.count > 0:
                    self.count -= 1

    def reset(self) -> None:
        self.count = 0
        self._header.clear()
        self._skip = 0


__all__ = [
    "CONNECTED",
    "CONNECTION",
    "ERROR",
    "FEATURE_ERROR",
    "FEATURE_RECONNECTION",
    "GUEST",
    "PAGE_MIN",
    "RECONNECT",
    "REQ_CONS",
    "REQ_OFFSET",
    "REQ_PROD",
    "RING_SIZE",
    "RSP_CONS",
    "RSP_OFFSET",
    "RSP_PROD",
    "SERVER",
    "SERVER_FEATURES",
    "Backoff",
    "Outstanding",
    "RingEnd",
    "RingIndexError",
    "Step",
    "spans",
    "used",
]

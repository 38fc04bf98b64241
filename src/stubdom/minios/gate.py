"""The xenstore proxy's core, sans-IO: which of the application's requests must wait.

The application writes ``paused`` right after closing the save FIFO, and the toolstack
reads console 1's file as soon as it sees ``paused``.  So a WRITE of the device model's
``state`` node may reach xenstored only once the save relay is idle (everything the
application wrote is in console 1's file).  `RequestGate` cuts the byte stream from the
application into packets (the header codec of `stubdom.wire.packet`) and marks each
such WRITE with a `BARRIER` before it; everything else passes as the bytes it came as.
Replies and watch events (the other direction) are never looked at.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

from stubdom.wire.constants import HEADER_SIZE, PAYLOAD_MAX, Op
from stubdom.wire.packet import decode_header


class Barrier(enum.Enum):
    """Before the bytes that follow it are forwarded, wait until the save relay is idle."""

    BARRIER = "barrier"


BARRIER = Barrier.BARRIER
Item = bytes | Barrier


class RequestGate:
    """One application connection's requests, in order; `feed` says what to forward."""

    def __init__(self, held_paths: Collection[str]) -> None:
        self._held = frozenset(p.encode() for p in held_paths)
        self._buf = bytearray()
        #: After a header no xenstored accepts, the stream cannot be cut any more: the
        #: rest goes through as it is, and xenstored closes the connection.
        self.raw = False

    def _holds(self, op: int, payload: bytes | bytearray) -> bool:
        if op != Op.WRITE:
            return False
        path = bytes(payload).split(b"\0", 1)[0]
        return path in self._held

    def feed(self, data: bytes | bytearray | memoryview) -> list[Item]:
        """The bytes to forward now, each WRITE of a held path preceded by `BARRIER`.
        A packet is forwarded only once whole; an incomplete tail is kept."""
        if self.raw:
            return [bytes(data)] if data else []
        buf = self._buf
        buf += data
        out: list[Item] = []
        pos = start = 0
        while len(buf) - pos >= HEADER_SIZE:
            op, _, _, length = decode_header(bytes(buf[pos : pos + HEADER_SIZE]))
            if length > PAYLOAD_MAX:
                self.raw = True
                pos = len(buf)
                break
            end = pos + HEADER_SIZE + length
            if end > len(buf):
                break
            if self._holds(op, buf[pos + HEADER_SIZE : end]):
                if pos > start:
                    out.append(bytes(buf[start:pos]))
                out.append(BARRIER)
                start = pos
            pos = end
        if pos > start:
            out.append(bytes(buf[start:pos]))
        del buf[:pos]
        return out

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete packet, not yet forwarded."""
        return len(self._buf)

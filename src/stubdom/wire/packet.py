"""The 16-byte header codec, an incremental decoder and payload helpers.

The header is four host-order ``uint32`` (type, req_id, tx_id, len) with no
conversion, exactly as libxenstore and the daemons read and write the raw struct.
"""

from __future__ import annotations

import functools
import struct
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple

from stubdom.wire.constants import HEADER_SIZE, PAYLOAD_MAX, TYPE_COUNT, Op

#: The header as a `struct.Struct` (shells pack replies with it directly).
HEADER: Final = struct.Struct("=4I")
_HEADER: Final = HEADER
# Final: mypyc keeps these in C variables, not in the module's dict.
_unpack_from: Final = _HEADER.unpack_from


def op_name(op: int) -> str:
    """The name of message type ``op`` (``READ``), or its number if 4.17 has none, so
    logs and errors can name types a peer made up."""
    try:
        return Op(op).name
    except ValueError:
        return str(op)


class WireError(Exception):
    """Base class of every error raised by the wire layer."""


class DecodeError(WireError):
    """The byte stream cannot be decoded any further; the connection is unusable."""


class PayloadTooLong(DecodeError):
    """A header announced more than ``PAYLOAD_MAX`` bytes of payload."""

    def __init__(self, length: int) -> None:
        super().__init__(f"payload length {length} exceeds the limit of {PAYLOAD_MAX} bytes")
        self.length = length


class UnknownType(WireError):
    """A message type outside ``xs_wire.h`` 4.17."""

    def __init__(self, op: int) -> None:
        super().__init__(f"unknown message type {op}")
        self.op = op


class MissingTerminator(WireError):
    """A string argument was not terminated by NUL."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(f"payload {payload[:40]!r} does not end in NUL")
        self.payload = payload


class Packet(NamedTuple):
    """One xenstore message, request or reply.

    ``op`` is a plain int so that types unknown to 4.17 can still be carried (a server
    must answer them with ENOSYS rather than fail to decode them).

    An immutable named tuple rather than a frozen dataclass: a server builds two per
    request, and a tuple is built in half the time.
    """

    op: int
    payload: bytes = b""
    req_id: int = 0
    tx_id: int = 0

    @property
    def type_name(self) -> str:
        return op_name(self.op)

    def args(self) -> list[bytes]:
        """The NUL-separated strings of the payload (the last one need not be empty)."""
        return self.payload.split(b"\0")

    def __repr__(self) -> str:
        return (
            f"Packet({self.type_name}, {self.payload!r}, req_id={self.req_id}, tx_id={self.tx_id})"
        )


#: A `Packet`'s fields as a plain tuple, (type, payload, req_id, tx_id): what a server
#: handles and queues.  Built in C, where a `Packet` costs a call (a thousand
#: instructions or more); a `Packet` is one too.
RawPacket = tuple[int, bytes, int, int]


#: ``make_packet((op, payload, req_id, tx_id))``: a `Packet` built in C, without the
#: Python-level ``__new__`` a NamedTuple has (two per request on a server).
make_packet: Final[Callable[[tuple[int, bytes, int, int]], Packet]] = functools.partial(
    tuple.__new__, Packet
)


#: What `make_packet` calls, called directly by the decoder (no partial in between).
_new: Final[Callable[[type[Packet], tuple[int, bytes, int, int]], Packet]] = tuple.__new__


def encode(packet: Packet) -> bytes:
    """Header plus payload, ready for the wire."""
    if len(packet.payload) > PAYLOAD_MAX:
        raise PayloadTooLong(len(packet.payload))
    return (
        _HEADER.pack(packet.op, packet.req_id, packet.tx_id, len(packet.payload)) + packet.payload
    )


def decode_header(data: bytes) -> tuple[int, int, int, int]:
    """(type, req_id, tx_id, len) from the first 16 bytes of ``data``."""
    op, req_id, tx_id, length = _HEADER.unpack_from(data)
    return op, req_id, tx_id, length


def validate_type(op: int) -> Op:
    """The ``Op`` for ``op``, or `UnknownType` if 4.17 does not define it."""
    if op >= TYPE_COUNT:
        raise UnknownType(op)
    return Op(op)


class PacketDecoder:
    """Accepts bytes split anywhere and yields whole packets.

    After a `DecodeError` the stream is desynchronised and the decoder refuses more
    input, as cxenstored stops reading a connection that sent an over-long header.
    """

    def __init__(self, max_payload: int = PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        #: Whole packets decoded and not yet taken, oldest first (a server pops them
        #: straight from here).
        self.ready: deque[Packet] = deque()
        self._max = max_payload
        self._broken: DecodeError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take ``data`` (copied: the caller may reuse its buffer) and queue whole packets.

        Packets are cut straight out of ``data`` when nothing is left over from an
        earlier call, the usual case of one request per read; only an incomplete tail
        is kept.
        """
        if self._broken is not None:
            raise self._broken
        buf: bytes | bytearray | memoryview
        if not self._buf and len(data) >= HEADER_SIZE:
            # The usual read: exactly one whole request (bytes: one slice, no view).
            op, req_id, tx_id, length = _unpack_from(data)
            if len(data) == HEADER_SIZE + length and length <= self._max:
                payload = data[HEADER_SIZE:] if isinstance(data, bytes) else bytes(
                    data[HEADER_SIZE:])
                self.ready.append(_new(Packet, (op, payload, req_id, tx_id)))
                return
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        ready = self.ready
        size = len(buf)
        pos = 0
        try:
            while size - pos >= HEADER_SIZE:
                op, req_id, tx_id, length = _HEADER.unpack_from(buf, pos)
                if length > self._max:
                    self._broken = PayloadTooLong(length)
                    raise self._broken
                start = pos + HEADER_SIZE
                end = start + length
                if size < end:
                    break
                ready.append(_new(Packet, (op, bytes(buf[start:end]), req_id, tx_id)))
                pos = end
        finally:
            # Keep what is not consumed (also after a bad header, as before).
            if buf is self._buf:
                if pos:
                    del self._buf[:pos]
            elif pos < size:
                self._buf += buf[pos:]

    def next_packet(self) -> Packet | None:
        """The oldest complete packet, or None if more bytes are needed."""
        return self.ready.popleft() if self.ready else None

    def __iter__(self) -> Iterator[Packet]:
        while self.ready:
            yield self.ready.popleft()

    def whole(self, data: bytes) -> RawPacket | None:
        """``data`` as one packet's fields if it is exactly one packet and nothing is
        buffered, queued or broken (a server's usual read: one request, no `Packet`
        built); else None, and `feed` takes ``data``."""
        if self._buf or self.ready or self._broken is not None or len(data) < HEADER_SIZE:
            return None
        op, req_id, tx_id, length = _unpack_from(data)
        if len(data) != HEADER_SIZE + length or length > self._max:
            return None
        return (op, data[HEADER_SIZE:], req_id, tx_id)

    @property
    def pending_bytes(self) -> int:
        """Bytes received that do not yet form a whole packet."""
        return len(self._buf)


def join_args(*args: str | bytes) -> bytes:
    """Each argument NUL-terminated, the way requests carry strings."""
    out = bytearray()
    for a in args:
        out += a.encode() if isinstance(a, str) else a
        out += b"\0"
    return bytes(out)


def split_args(payload: bytes, count: int | None = None) -> list[bytes]:
    """The NUL-terminated strings of a request.

    With ``count`` the payload must hold exactly that many strings (the strictness of
    cxenstored); `MissingTerminator` if the last one is not NUL-terminated and
    `ValueError` if the count is wrong.
    """
    if not payload.endswith(b"\0"):
        raise MissingTerminator(payload)
    parts = payload[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise ValueError(f"expected {count} strings, got {len(parts)}")
    return parts


def error_packet(request: Packet, name: str) -> Packet:
    """The ERROR reply to ``request`` carrying the errno name."""
    return Packet(Op.ERROR, name.encode() + b"\0", request.req_id, request.tx_id)

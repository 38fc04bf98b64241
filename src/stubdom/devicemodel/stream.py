"""The device-model state stream: what console 1 carries out and console 2 back in.

Sans-IO.  The console is a byte pipe with no end-of-file a reader can trust (a file
backend just stops growing), so the stream describes itself: a reader knows from the
header exactly how many bytes make it whole, reads no further, and can tell a stream cut
short or damaged from a complete one.

The toolstack checks what console 1 delivered as a qemu-traditional savevm stream
(`check_savevm_complete`, at the end of this module: ``QEVM``, version 3, a first
``START``/``FULL`` section with a printable idstr, a final ``QEMU_VM_EOF``).  So the
self-describing record travels as the body of one ``FULL`` section of such a stream.
Byte layout (all integers big-endian, like QEMU's)::

    off  size  field
      0     4  "QEVM"                    QEMU_VM_FILE_MAGIC
      4     4  3                         QEMU_VM_FILE_VERSION
      8     1  0x04                      QEMU_VM_SECTION_FULL
      9     4  0                         section id
     13     1  10                        idstr length
     14    10  "stubdom-dm"              idstr
     24     4  0                         instance id
     28     4  1                         section version id
     32     8  "STUBDMSS"                MAGIC (our record starts here)
     40     2  1                         FORMAT_VERSION
     42     1  n                         backend name length (1..32)
     43     n  backend name              printable ASCII ("sim", "qemu")
   43+n     4  payload length L          at most MAX_PAYLOAD
   47+n     4  CRC-32                    zlib.crc32 of bytes 32..47+n (the record
                                         header without the CRC) then the payload
   51+n     L  payload                   the backend's own state
 51+n+L     1  0x00                      QEMU_VM_EOF

CRC-32 finds every error burst of up to 32 bits, so any one damaged byte of the header
or payload is always caught; a damaged length shows up as a stream cut short, trailing
bytes or a CRC mismatch.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from stubdom.devicemodel.base import BytesLike, DeviceModelError

# qemu-traditional's savevm stream (QEMU 0.10 savevm.c), which ours is one section of.
QEMU_VM_FILE_MAGIC = b"QEVM"
QEMU_VM_FILE_VERSION = 3
QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_FULL = 0x04
SECTION_IDSTR = b"stubdom-dm"
SECTION_INSTANCE_ID = 0
SECTION_VERSION_ID = 1

#: Where our record starts: the fixed savevm prologue before it.
_PROLOGUE = (
    QEMU_VM_FILE_MAGIC
    + struct.pack(">IBIB", QEMU_VM_FILE_VERSION, QEMU_VM_SECTION_FULL, 0, len(SECTION_IDSTR))
    + SECTION_IDSTR
    + struct.pack(">II", SECTION_INSTANCE_ID, SECTION_VERSION_ID)
)
PROLOGUE_SIZE = len(_PROLOGUE)  # 32

MAGIC = b"STUBDMSS"
FORMAT_VERSION = 1
MAX_BACKEND_NAME = 32
#: A sanity bound: a corrupt length must not make a reader wait for gigabytes.
MAX_PAYLOAD = 256 * 1024 * 1024

# Offsets inside the stream.
_OFF_MAGIC = PROLOGUE_SIZE
_OFF_VERSION = _OFF_MAGIC + len(MAGIC)  # 40
_OFF_NAMELEN = _OFF_VERSION + 2  # 42
_OFF_NAME = _OFF_NAMELEN + 1  # 43
#: Bytes of the stream besides the backend name and the payload.
OVERHEAD = _OFF_NAME + 4 + 4 + 1


class StreamError(DeviceModelError, ValueError):
    """A device-model state stream that cannot be used; the message is one line."""


def is_printable_name(raw: BytesLike) -> bool:
    """A savevm section idstr or a backend name: printable ASCII, without spaces."""
    return all(0x20 < c < 0x7F for c in bytes(raw))


def _check_name(backend: str) -> bytes:
    raw = backend.encode("utf-8")
    if not 0 < len(raw) <= MAX_BACKEND_NAME or not is_printable_name(raw):
        raise ValueError(
            f"backend name {backend!r}: 1-{MAX_BACKEND_NAME} printable ASCII characters"
        )
    return raw


def _nbytes(part: BytesLike) -> int:
    return part.nbytes if isinstance(part, memoryview) else len(part)


def encode_state_parts(backend: str, parts: Sequence[BytesLike]) -> list[BytesLike]:
    """The stream for the payload made of ``parts`` (``backend``'s own state), as pieces
    to be written one after the other: the header, ``parts`` themselves (not copied),
    the final ``QEMU_VM_EOF``."""
    name = _check_name(backend)
    length = sum(_nbytes(p) for p in parts)
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    head = MAGIC + struct.pack(">HB", FORMAT_VERSION, len(name)) + name + struct.pack(">I", length)
    crc = zlib.crc32(head)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return [_PROLOGUE + head + struct.pack(">I", crc), *parts, bytes([QEMU_VM_EOF])]


def encode_state(backend: str, payload: BytesLike) -> bytes:
    """The whole stream for ``payload`` (``backend``'s own state)."""
    return b"".join(encode_state_parts(backend, [payload]))


@dataclass(frozen=True)
class DecodedState:
    """A whole, intact stream: who wrote it and where its payload lies in ``stream``."""

    backend: str
    #: The whole stream, when the reader kept it (else empty).
    stream: memoryview
    offset: int
    length: int

    @property
    def view(self) -> memoryview:
        """The payload, without a copy."""
        if self.stream.nbytes < self.offset + self.length:
            raise ValueError("the reader did not keep the stream")
        return self.stream[self.offset : self.offset + self.length]

    @property
    def payload(self) -> bytes:
        """The payload, copied."""
        return self.view.tobytes()


class StreamReader:
    """Incremental decoder: feed bytes as they come; `needed` says how many more.

    `needed` never reaches past the end of the stream, so a reader that reads exactly
    `needed` bytes at a time stops at the stream's last byte.  Errors are raised by
    `feed` as soon as the bytes at hand prove the stream bad.

    The CRC is computed as the bytes come, and the stream is kept in one buffer
    (`stream`) that the bytes are appended to (growing a buffer costs less than filling
    one allocated at the stream's size: that one is zeroed first); with ``keep=False``
    nothing past the header is kept (a check only).
    """

    def __init__(self, *, keep: bool = True) -> None:
        self._keep = keep
        self._head = bytearray()  # the header, until `_total` is known
        self._buf = bytearray()  # the whole stream (keep), once `_total` is known
        self._n = 0  # bytes received
        self._total: int | None = None  # known once the header is read
        self._start = 0  # where the payload starts
        self._crc = 0  # running CRC-32 of the header then the payload received so far
        self._last = -1  # the last byte received
        self._result: DecodedState | None = None

    @property
    def received(self) -> int:
        return self._n

    @property
    def total(self) -> int | None:
        """The stream's whole length, once its header has been read."""
        return self._total

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def header_known(self) -> bool:
        return self._total is not None

    @property
    def stream(self) -> bytearray:
        """The stream received so far (the whole of it once `done`), if kept."""
        return self._buf if self._total is not None else self._head

    @property
    def needed(self) -> int:
        """How many more bytes to read: exact once `header_known`, else the next header
        piece (a lower bound on what is missing); 0 when done."""
        if self._total is not None:
            return self._total - self._n
        n = self._n
        if n < _OFF_NAMELEN + 1:
            return _OFF_NAMELEN + 1 - n
        return _OFF_NAME + self._head[_OFF_NAMELEN] + 8 - n

    def feed(self, data: BytesLike) -> int:
        """Take bytes from ``data`` up to the end of the stream; returns how many were
        taken (fewer than ``len(data)`` only when the stream ended inside ``data``)."""
        taken = 0
        with memoryview(data) as whole, whole.cast("B") as view:  # no copy of a chunk
            size = view.nbytes
            while taken < size and not self.done:
                piece = view[taken : taken + self.needed]
                taken += piece.nbytes
                if self._total is None:
                    self._head += piece
                    self._n += piece.nbytes
                    self._advance()
                else:
                    self._body(piece)
        return taken

    def _body(self, piece: memoryview) -> None:
        """Bytes past the header (never past the end of the stream)."""
        assert self._total is not None
        at, size = self._n, piece.nbytes
        if self._keep:
            self._buf += piece
        end = min(at + size, self._total - 1)  # the payload ends before the EOF byte
        if end > at:
            self._crc = zlib.crc32(piece[: end - at], self._crc)
        self._n += size
        self._last = piece[size - 1]
        if self._n == self._total:
            self._finish()

    def result(self) -> DecodedState:
        """The decoded state; `StreamError` (truncated) if the stream is not whole yet."""
        if self._result is None:
            raise StreamError(self._truncated_text())
        return self._result

    def _truncated_text(self) -> str:
        n = self._n
        if self._total is not None:
            return (
                f"device-model state truncated: {n} of {self._total} bytes, "
                f"{self._total - n} missing"
            )
        return (
            f"device-model state truncated: {n} bytes, inside the header "
            f"(at least {self.needed} more bytes missing)"
        )

    def _advance(self) -> None:
        """Check what the new header bytes complete; set `_total` once it is known."""
        buf = self._head
        n = len(buf)
        self._check_prologue(min(n, PROLOGUE_SIZE))
        if n >= _OFF_MAGIC + len(MAGIC):
            magic = bytes(buf[_OFF_MAGIC : _OFF_MAGIC + len(MAGIC)])
            if magic != MAGIC:
                raise StreamError(
                    f"device-model state: wrong magic {magic!r} at offset {_OFF_MAGIC}, "
                    f"expected {MAGIC!r}"
                )
        if n >= _OFF_NAMELEN:
            (version,) = struct.unpack_from(">H", buf, _OFF_VERSION)
            if version != FORMAT_VERSION:
                raise StreamError(
                    f"device-model state: unknown format version {version} "
                    f"(this reader knows {FORMAT_VERSION})"
                )
        if n >= _OFF_NAMELEN + 1:
            namelen = buf[_OFF_NAMELEN]
            if not 0 < namelen <= MAX_BACKEND_NAME:
                raise StreamError(
                    f"device-model state: backend name length {namelen} "
                    f"(1-{MAX_BACKEND_NAME} allowed)"
                )
            off_len = _OFF_NAME + namelen
            if n >= off_len + 8:
                name = bytes(buf[_OFF_NAME:off_len])
                if not is_printable_name(name):
                    raise StreamError(f"device-model state: backend name {name!r} not ASCII")
                (length,) = struct.unpack_from(">I", buf, off_len)
                if length > MAX_PAYLOAD:
                    raise StreamError(
                        f"device-model state: payload length {length} exceeds {MAX_PAYLOAD}"
                    )
                self._total = OVERHEAD + namelen + length
                self._start = off_len + 8
                self._crc = zlib.crc32(buf[_OFF_MAGIC : off_len + 4])
                if self._keep:
                    self._buf = buf  # the header, which the rest is appended to

    def _check_prologue(self, upto: int) -> None:
        got = bytes(self._head[:upto])
        if got == _PROLOGUE[:upto]:
            return
        if got[:4] != QEMU_VM_FILE_MAGIC[: min(upto, 4)]:
            raise StreamError(
                f"device-model state: wrong magic {got[:4]!r}, expected {QEMU_VM_FILE_MAGIC!r} "
                "(a qemu savevm stream)"
            )
        if upto >= 8 and got[4:8] != _PROLOGUE[4:8]:
            (version,) = struct.unpack(">I", got[4:8])
            raise StreamError(
                "device-model state: unknown savevm version "
                f"{version}, expected {QEMU_VM_FILE_VERSION}"
            )
        raise StreamError(
            "device-model state: not a stubdom device-model section "
            f"(savevm section header {got[8:]!r}, expected {_PROLOGUE[8:upto]!r})"
        )

    def _finish(self) -> None:
        assert self._total is not None
        head = self._head
        off_len = _OFF_NAME + head[_OFF_NAMELEN]
        length, crc = struct.unpack_from(">II", head, off_len)
        if self._last != QEMU_VM_EOF:
            raise StreamError(
                f"device-model state: byte {self._total - 1} is 0x{self._last:02x}, "
                "not the final QEMU_VM_EOF"
            )
        if self._crc != crc:
            raise StreamError(
                f"device-model state: checksum mismatch (CRC-32 0x{self._crc:08x}, "
                f"header says 0x{crc:08x})"
            )
        name = bytes(head[_OFF_NAME:off_len]).decode("ascii")
        self._result = DecodedState(name, memoryview(self._buf).toreadonly(), self._start, length)


def decode_state_view(data: BytesLike) -> tuple[str, memoryview]:
    """``(backend, payload)`` of a whole stream, the payload a view into ``data`` (no
    copy); `StreamError` if it is not exactly one complete, intact stream."""
    reader = StreamReader(keep=False)
    with memoryview(data) as whole:
        view = whole.cast("B")
    taken = reader.feed(view)
    if taken < view.nbytes:
        raise StreamError(
            f"device-model state: {view.nbytes - taken} trailing bytes after the "
            f"{taken}-byte stream"
        )
    result = reader.result()
    return result.backend, view[result.offset : result.offset + result.length]


def check_pieces(pieces: Iterable[BytesLike]) -> str:
    """Check a whole stream given in pieces (read from a file, say) without keeping it:
    the backend's name, or the `StreamError` `decode_state` raises for the same bytes
    (the header is gathered and fed as `decode_state` feeds it, whatever the pieces)."""
    reader = StreamReader(keep=False)
    pending = bytearray()  # the header piece being gathered
    size = taken = 0
    for piece in pieces:
        with memoryview(piece) as whole, whole.cast("B") as view:
            size += view.nbytes
            at = 0
            while at < view.nbytes and not reader.done:
                if reader.header_known:
                    taken += reader.feed(view[at:])
                    break
                want = reader.needed - len(pending)
                pending += view[at : at + want]
                at += want
                if len(pending) == reader.needed:
                    taken += reader.feed(pending)
                    pending.clear()
    if pending:
        taken += reader.feed(pending)
    if taken < size:
        raise StreamError(
            f"device-model state: {size - taken} trailing bytes after the {taken}-byte stream"
        )
    return reader.result().backend


def decode_state(data: BytesLike) -> tuple[str, bytes]:
    """``(backend, payload)`` of a whole stream; `StreamError` if it is not exactly one
    complete, intact stream."""
    backend, payload = decode_state_view(data)
    return backend, payload.tobytes()


def decode_state_view_for(backend: str, data: BytesLike | DecodedState) -> memoryview:
    """The payload (a view into ``data``) of a stream that ``backend`` wrote; `StreamError`
    naming the writer if another backend wrote it (a state cannot move between device
    models).  A `DecodedState` (a `StreamReader`'s result: the stream kept, checked
    whole as it came) is not decoded or checked again."""
    if isinstance(data, DecodedState):
        writer, payload = data.backend, data.view
    else:
        writer, payload = decode_state_view(data)
    if writer != backend:
        raise StreamError(
            f"device-model state was written by the {writer!r} device model, "
            f"not {backend!r}; it cannot be restored here"
        )
    return payload


def decode_state_for(backend: str, data: BytesLike | DecodedState) -> bytes:
    """The payload of a stream that ``backend`` wrote; `StreamError` naming the writer
    if another backend wrote it (a state cannot move between device models)."""
    return decode_state_view_for(backend, data).tobytes()


def is_complete(data: BytesLike) -> bool:
    """True iff ``data`` is exactly one complete, intact stream."""
    try:
        decode_state_view(data)
    except StreamError:
        return False
    return True


# -- any qemu-traditional savevm stream ------------------------------------------------


class SavevmError(StreamError):
    """A device-model state that is not a complete savevm stream: ``detail`` says why,
    ``offset`` where in the state (when known)."""

    def __init__(self, detail: str, offset: int | None = None) -> None:
        where = f" (at offset {offset})" if offset is not None else ""
        super().__init__(f"device-model state: {detail}{where}")
        self.detail = detail
        self.offset = offset


def check_savevm_complete(blob: BytesLike) -> None:
    """Refuse a device-model state that is not a complete qemu-traditional savevm stream.

    qemu-trad (QEMU 0.10 ``savevm.c``) writes ``be32 QEVM``, ``be32 3``, then sections
    (``START``/``FULL``: type u8, section id be32, idstr length u8, idstr, instance id be32,
    version id be32, body; ``PART``/``END``: type u8, section id be32, body) and a final
    ``QEMU_VM_EOF`` byte.  No section body length is recorded, so the sections cannot be
    walked without each device's own loader.  Verified: the magic, the version (3; the
    older v2 format is refused), that a first section follows and its header is complete
    and well-formed (type START or FULL, an idstr of printable ASCII), and that the last
    byte is ``QEMU_VM_EOF`` after that header.  NOT verified: the bodies, the number of
    sections, or that the final zero byte is the EOF marker rather than a zero inside a
    body of a stream cut short (a zero byte is common in device state) -- that is what
    waiting for ``paused`` before reading the file is for.  A stream whose first
    section is stubdom-dm's is decoded in full, so its length and CRC-32 are verified
    as well.  `StreamError` (a `SavevmError` for the savevm framing) if unusable.
    """
    size = len(blob)
    idstr = check_savevm_header(blob[:SAVEVM_HEAD], size, blob[-1] if size else -1)
    if idstr == SECTION_IDSTR:
        check_pieces([blob])


#: Bytes of a device-model state that `check_savevm_header` looks at, at most.
SAVEVM_HEAD = 14 + 255 + 8


def check_savevm_header(head: BytesLike, size: int, last: int) -> bytes:
    """`check_savevm_complete` on the parts of the state it looks at: its first
    `SAVEVM_HEAD` bytes (or all of it, if shorter), its size and its last byte (-1 if
    empty).  Returns the first section's idstr; it is for the caller to check a
    stubdom-dm stream in full (`check_pieces`)."""
    blob = bytes(head)
    if size < 8:
        raise SavevmError(f"truncated: {size} bytes, not even a savevm header")
    magic, version = struct.unpack(">II", blob[:8])
    if blob[:4] != QEMU_VM_FILE_MAGIC:
        raise SavevmError(f"not a QEMU savevm stream (magic 0x{magic:08x}, not QEVM)", 0)
    if version != QEMU_VM_FILE_VERSION:
        raise SavevmError(f"unsupported savevm version {version}, expected 3", 4)
    if size == 8:
        raise SavevmError("truncated: no section and no EOF after the header", 8)
    stype = blob[8]
    if stype == QEMU_VM_EOF:
        raise SavevmError("empty: EOF right after the header, no device state", 8)
    if stype not in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
        raise SavevmError(f"first section has type 0x{stype:02x}, not START/FULL", 8)
    # type u8, section id be32, idstr len u8
    if size < 14:
        raise SavevmError("truncated inside the first section header", size)
    idlen = blob[13]
    hdr_end = 14 + idlen + 8
    if idlen == 0:
        raise SavevmError("first section has an empty idstr", 13)
    if size < hdr_end:
        raise SavevmError("truncated inside the first section header", size)
    idstr = blob[14 : 14 + idlen]
    if not is_printable_name(idstr):
        raise SavevmError(f"first section idstr {idstr!r} is not printable ASCII", 14)
    if size == hdr_end or last != QEMU_VM_EOF:
        raise SavevmError("truncated: does not end with QEMU_VM_EOF", size)
    return idstr


def savevm_stream(sections: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> bytes:
    """A well-formed qemu-trad savevm stream: the header, one FULL section per entry
    (section ids 0, 1, ..., instance id 0, version id 1), then ``QEMU_VM_EOF``."""
    items = list(sections.items() if isinstance(sections, Mapping) else sections)
    if not items:
        raise ValueError("a savevm stream needs at least one section")
    out = bytearray(QEMU_VM_FILE_MAGIC + struct.pack(">I", QEMU_VM_FILE_VERSION))
    for section_id, (idstr, body) in enumerate(items):
        name = idstr.encode("ascii")
        if not 0 < len(name) < 256 or not is_printable_name(name):
            raise ValueError(f"section idstr {idstr!r}: 1-255 printable ASCII characters")
        out += struct.pack(">BIB", QEMU_VM_SECTION_FULL, section_id, len(name)) + name
        out += struct.pack(">II", 0, 1) + body
    out.append(QEMU_VM_EOF)
    return bytes(out)

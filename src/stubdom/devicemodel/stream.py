"""The device-model state stream: what console 1 carries out and console 2 back in.

Sans-IO.  The console is a byte pipe with no end-of-file a reader can trust (a file
backend just stops growing), so the stream describes itself: a reader knows from the
header exactly how many bytes make it whole, reads no further, and can tell a stream cut
short or damaged from a complete one.

The toolstack checks what console 1 delivered as a qemu-traditional savevm stream
(`stubdom.toolstack.savefile.check_dm_state_complete`: ``QEVM``, version 3, a first
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
from dataclasses import dataclass

from stubdom.devicemodel.base import DeviceModelError

QEVM_MAGIC = b"QEVM"
QEVM_VERSION = 3
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_EOF = 0x00
SECTION_IDSTR = b"stubdom-dm"
SECTION_INSTANCE_ID = 0
SECTION_VERSION_ID = 1

#: Where our record starts: the fixed savevm prologue before it.
_PROLOGUE = (
    QEVM_MAGIC
    + struct.pack(">IBIB", QEVM_VERSION, QEMU_VM_SECTION_FULL, 0, len(SECTION_IDSTR))
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


def _check_name(backend: str) -> bytes:
    raw = backend.encode("utf-8")
    if not 0 < len(raw) <= MAX_BACKEND_NAME or not all(0x20 < c < 0x7F for c in raw):
        raise ValueError(
            f"backend name {backend!r}: 1-{MAX_BACKEND_NAME} printable ASCII characters"
        )
    return raw


def encode_state(backend: str, payload: bytes) -> bytes:
    """The whole stream for ``payload`` (``backend``'s own state)."""
    name = _check_name(backend)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = (
        MAGIC
        + struct.pack(">HB", FORMAT_VERSION, len(name))
        + name
        + struct.pack(">I", len(payload))
    )
    crc = zlib.crc32(payload, zlib.crc32(head))
    return _PROLOGUE + head + struct.pack(">I", crc) + payload + bytes([QEMU_VM_EOF])


@dataclass(frozen=True)
class DecodedState:
    backend: str
    payload: bytes


class StreamReader:
    """Incremental decoder: feed bytes as they come; `needed` says how many more.

    `needed` never reaches past the end of the stream, so a reader that reads exactly
    `needed` bytes at a time stops at the stream's last byte.  Errors are raised by
    `feed` as soon as the bytes at hand prove the stream bad.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._total: int | None = None  # known once the header is read
        self._result: DecodedState | None = None

    @property
    def received(self) -> int:
        return len(self._buf)

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
    def needed(self) -> int:
        """How many more bytes to read: exact once `header_known`, else the next header
        piece (a lower bound on what is missing); 0 when done."""
        if self._total is not None:
            return self._total - len(self._buf)
        n = len(self._buf)
        if n < _OFF_NAMELEN + 1:
            return _OFF_NAMELEN + 1 - n
        return _OFF_NAME + self._buf[_OFF_NAMELEN] + 8 - n

    def feed(self, data: bytes) -> int:
        """Take bytes from ``data`` up to the end of the stream; returns how many were
        taken (fewer than ``len(data)`` only when the stream ended inside ``data``)."""
        taken = 0
        with memoryview(data) as view:  # no copy of a large chunk before it is appended
            while taken < len(data) and not self.done:
                want = self.needed
                self._buf += view[taken : taken + want]
                taken = min(len(data), taken + want)
                self._advance()
        return taken

    def result(self) -> DecodedState:
        """The decoded state; `StreamError` (truncated) if the stream is not whole yet."""
        if self._result is None:
            raise StreamError(self._truncated_text())
        return self._result

    def _truncated_text(self) -> str:
        n = len(self._buf)
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
        """Check what the new bytes complete; set `_total` / `_result`."""
        buf = self._buf
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
            if self._total is None and n >= off_len + 8:
                name = bytes(buf[_OFF_NAME:off_len])
                if not all(0x20 < c < 0x7F for c in name):
                    raise StreamError(f"device-model state: backend name {name!r} not ASCII")
                (length,) = struct.unpack_from(">I", buf, off_len)
                if length > MAX_PAYLOAD:
                    raise StreamError(
                        f"device-model state: payload length {length} exceeds {MAX_PAYLOAD}"
                    )
                self._total = OVERHEAD + namelen + length
        if self._total is not None and n == self._total:
            self._finish()

    def _check_prologue(self, upto: int) -> None:
        got = bytes(self._buf[:upto])
        if got == _PROLOGUE[:upto]:
            return
        if got[:4] != QEVM_MAGIC[: min(upto, 4)]:
            raise StreamError(
                f"device-model state: wrong magic {got[:4]!r}, expected {QEVM_MAGIC!r} "
                "(a qemu savevm stream)"
            )
        if upto >= 8 and got[4:8] != _PROLOGUE[4:8]:
            (version,) = struct.unpack(">I", got[4:8])
            raise StreamError(
                f"device-model state: unknown savevm version {version}, expected {QEVM_VERSION}"
            )
        raise StreamError(
            "device-model state: not a stubdom device-model section "
            f"(savevm section header {got[8:]!r}, expected {_PROLOGUE[8:upto]!r})"
        )

    def _finish(self) -> None:
        buf = self._buf
        namelen = buf[_OFF_NAMELEN]
        off_len = _OFF_NAME + namelen
        length, crc = struct.unpack_from(">II", buf, off_len)
        start = off_len + 8
        if buf[-1] != QEMU_VM_EOF:
            raise StreamError(
                f"device-model state: byte {len(buf) - 1} is 0x{buf[-1]:02x}, "
                "not the final QEMU_VM_EOF"
            )
        with memoryview(buf) as view:  # the payload is copied once
            payload = bytes(view[start : start + length])
            actual = zlib.crc32(payload, zlib.crc32(view[_OFF_MAGIC : off_len + 4]))
        if actual != crc:
            raise StreamError(
                f"device-model state: checksum mismatch (CRC-32 0x{actual:08x}, "
                f"header says 0x{crc:08x})"
            )
        self._result = DecodedState(bytes(buf[_OFF_NAME:off_len]).decode("ascii"), payload)


def decode_state(data: bytes) -> tuple[str, bytes]:
    """``(backend, payload)`` of a whole stream; `StreamError` if it is not exactly one
    complete, intact stream."""
    reader = StreamReader()
    taken = reader.feed(data)
    if taken < len(data):
        raise StreamError(
            f"device-model state: {len(data) - taken} trailing bytes after the {taken}-byte stream"
        )
    result = reader.result()
    return result.backend, result.payload


def decode_state_for(backend: str, data: bytes) -> bytes:
    """The payload of a stream that ``backend`` wrote; `StreamError` naming the writer
    if another backend wrote it (a state cannot move between device models)."""
    writer, payload = decode_state(data)
    if writer != backend:
        raise StreamError(
            f"device-model state was written by the {writer!r} device model, "
            f"not {backend!r}; it cannot be restored here"
        )
    return payload


def is_complete(data: bytes) -> bool:
    """True iff ``data`` is exactly one complete, intact stream."""
    try:
        decode_state(data)
    except StreamError:
        return False
    return True

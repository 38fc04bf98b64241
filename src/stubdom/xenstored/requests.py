"""Request argument parsing with cxenstored's strictness and its C conversions."""

from __future__ import annotations

from stubdom.wire.packet import RawPacket
from stubdom.wire.perms import c_strtol
from stubdom.xenstored.errors import XsError


def onearg(packet: RawPacket) -> bytes:
    """Exactly one NUL-terminated string.

    Deliberate: where cx answers a stale errno (or aborts: xenstored_core.c ``onearg`` fails
    without setting errno, and with a stale 0 ``consider_message`` asserts) for a
    missing terminator, we answer EINVAL.
    """
    p = packet[1]
    if not p.endswith(b"\0") or p.find(b"\0") != len(p) - 1:
        raise XsError("EINVAL")
    return p[:-1]


def strings(packet: RawPacket) -> list[bytes]:
    """All NUL-terminated strings (a final unterminated piece is ignored, like cx)."""
    return packet[1].split(b"\0")[:-1]


def atoi_signed(raw: bytes) -> int:
    """C ``atoi``: decimal only (``0x10`` is 0, ``010`` is 10), as a 32-bit int."""
    value, _ = c_strtol(raw.decode("latin-1"), base=10)
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def atoi(raw: bytes) -> int:
    """``atoi`` stored in an ``unsigned int`` (domids, ports, offsets)."""
    return atoi_signed(raw) & 0xFFFFFFFF

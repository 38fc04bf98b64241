"""Request payloads and reply parsing: what every xenstore client sends and reads,
the asyncio client's sans-IO core (`stubdom.xenstore.protocol`) and the
`BlockingClient` alike.  Import-light (the wire codec and our errors; the permission
types only when permissions are parsed), for the blocking client's start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from stubdom.wire.constants import Op
from stubdom.wire.packet import join_args
from stubdom.xenstore.errors import ProtocolError

if TYPE_CHECKING:
    from stubdom.wire.perms import Perm

#: Largest reply payload accepted.  Servers limit replies to 4096 bytes on rings, but
#: oxenstored sends larger DIRECTORY replies on its Unix socket, so be generous.
DEFAULT_MAX_REPLY = 1 << 20

#: req_id and tx_id are 32-bit; 0 is "none".
ID_LIMIT = 1 << 32


def wire_text(raw: bytes) -> str:
    """Wire strings as ``str``, losslessly (paths are ASCII; tokens may be anything)."""
    return raw.decode("utf-8", "surrogateescape")


def wire_bytes(text: str | bytes) -> bytes:
    """``str`` as wire bytes, losslessly (a path from argv may hold surrogates)."""
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def error_name(payload: bytes) -> str:
    """The errno name an ERROR reply carries (EINVAL if it carries none)."""
    return parse_single(payload) or "EINVAL"


def args_payload(*args: str | bytes) -> bytes:
    """NUL-terminated strings; never empty, since oxenstored stalls on ``len == 0``."""
    return join_args(*(wire_bytes(a) for a in args)) if args else b"\0"


def write_payload(path: str, value: bytes) -> bytes:
    """WRITE carries the path NUL-terminated and then the raw value."""
    return wire_bytes(path) + b"\0" + value


def perms_payload(path: str, perms: Sequence[Perm | str]) -> bytes:
    return args_payload(path, *(str(p) for p in perms))


def parse_strings(payload: bytes) -> list[str]:
    """``a\\0b\\0`` -> ``["a", "b"]``; an empty payload is an empty list."""
    if not payload:
        return []
    body = payload[:-1] if payload.endswith(b"\0") else payload
    return [wire_text(p) for p in body.split(b"\0")]


def parse_single(payload: bytes) -> str:
    """A reply holding one NUL-terminated string (GET_DOMAIN_PATH, TRANSACTION_START)."""
    return wire_text(payload.split(b"\0", 1)[0])


def parse_perms(payload: bytes) -> list[Perm]:
    from stubdom.wire.perms import InvalidPermission, parse_perm  # few replies need it

    try:
        return [parse_perm(p) for p in parse_strings(payload)]
    except InvalidPermission as exc:
        raise ProtocolError(f"bad permission in GET_PERMS reply {payload!r}: {exc}") from exc


def parse_tx_id(payload: bytes) -> int:
    text = parse_single(payload)
    try:
        tx_id = int(text, 10)
    except ValueError:
        raise ProtocolError(f"TRANSACTION_START reply {payload!r} is not a number") from None
    if not 0 < tx_id < ID_LIMIT:
        raise ProtocolError(f"TRANSACTION_START reply {payload!r} is not a valid tx_id")
    return tx_id


def opened_transaction(request_op: int, reply_op: int, payload: bytes) -> int | None:
    """The transaction a TRANSACTION_START's reply says the server opened, or None (another
    request, an ERROR, or a payload that names no transaction): what to end with
    TRANSACTION_END "F" when nobody is left to use it."""
    if request_op != Op.TRANSACTION_START or reply_op != Op.TRANSACTION_START:
        return None
    try:
        return parse_tx_id(payload)
    except ProtocolError:
        return None


def parse_bool(payload: bytes) -> bool:
    text = parse_single(payload)
    if text not in ("T", "F"):
        raise ProtocolError(f"expected T or F, got {payload!r}")
    return text == "T"
